#!/usr/bin/env python3
"""A minimal Scrapy spider for the same job: pages 1..=N, the same regular
expression, JSON Lines out through Scrapy's feed exporter.

A peer for `pagecrawl-bench --peers`. Settings are Scrapy's defaults except
the concurrency (set to the benchmark's, globally and per domain), the log
level, and what a local benchmark must not do: no telnet console, no
cookies (the cookie middleware may look up the public-suffix list), no
proxies from the environment. Prints `pages=N failed=N items=N seconds=S`.

    python3 bench/peer_scrapy.py --url 'http://127.0.0.1:PORT/wooyun/bugs.php?page={page}' \
        --pages 2000 --concurrency 16 --pattern '...' --out items.jsonl
"""

import argparse
import html
import re
import sys
import time

import scrapy
from scrapy.crawler import CrawlerProcess


class ListingSpider(scrapy.Spider):
    name = "listing"

    def __init__(self, url, pages, pattern, **kwargs):
        super().__init__(**kwargs)
        self.url = url
        self.pages = pages
        self.pattern = re.compile(pattern)
        self.fields = list(self.pattern.groupindex)

    def requests(self):
        for page in range(1, self.pages + 1):
            yield scrapy.Request(
                self.url.replace("{page}", str(page)),
                cb_kwargs={"page": page},
                dont_filter=True,
            )

    async def start(self):  # Scrapy >= 2.13
        for request in self.requests():
            yield request

    def start_requests(self):  # older Scrapy
        return self.requests()

    def parse(self, response, page):
        for match in self.pattern.finditer(response.text):
            item = {"page": page}
            for name in self.fields:
                item[name] = html.unescape(match.group(name) or "").strip()
            yield item


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pattern", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    settings = {
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.concurrency,
        "DOWNLOAD_DELAY": 0,
        "ROBOTSTXT_OBEY": False,
        "TELNETCONSOLE_ENABLED": False,
        "COOKIES_ENABLED": False,
        "HTTPPROXY_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "FEEDS": {args.out: {"format": "jsonlines", "encoding": "utf8", "overwrite": True}},
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(ListingSpider)
    started = time.monotonic()
    process.crawl(crawler, url=args.url, pages=args.pages, pattern=args.pattern)
    process.start()
    elapsed = time.monotonic() - started
    stats = crawler.stats.get_stats()
    done = stats.get("downloader/response_status_count/200", 0)
    failed = args.pages - done
    items = stats.get("item_scraped_count", 0)
    print(f"pages={done} failed={failed} items={items} seconds={elapsed:.3f}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
