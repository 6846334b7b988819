#!/usr/bin/env python3
"""A minimal Scrapy spider for the same job: pages 1..=N, the same regular
expression, JSON Lines out through Scrapy's feed exporter.

With --detail-pattern (and optionally --tags-pattern) it is the two-stage
crawl of pagecrawl's `[detail]` table, written as Scrapy's documentation
shows it: each item's `url` is followed with `response.follow`, the listing
fields ride along in `cb_kwargs`, and the detail callback yields the merged
item (listing fields, the pattern's groups from its first match, and `tags`
as a list of every match). The item's `url` is the absolute one, as
pagecrawl writes it.

A peer for `pagecrawl-bench --peers`. Settings are Scrapy's defaults except
the concurrency (set to the benchmark's, globally and per domain), the log
level, and what a local benchmark must not do: no telnet console, no
cookies (the cookie middleware may look up the public-suffix list), no
proxies from the environment. Prints `pages=N failed=N items=N seconds=S`.

    python3 bench/peer_scrapy.py --url 'http://127.0.0.1:PORT/wooyun/bugs.php?page={page}' \
        --pages 2000 --concurrency 16 --pattern '...' --out items.jsonl \
        [--detail-pattern '...' --tags-pattern '...']
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

    def __init__(self, url, pages, pattern, detail_pattern=None, tags_pattern=None, **kwargs):
        super().__init__(**kwargs)
        self.url = url
        self.pages = pages
        self.pattern = re.compile(pattern)
        self.fields = list(self.pattern.groupindex)
        self.detail = re.compile(detail_pattern) if detail_pattern else None
        self.detail_fields = list(self.detail.groupindex) if self.detail else []
        self.tags = re.compile(tags_pattern) if tags_pattern else None
        self.listing_done = 0
        self.listed = 0
        self.detail_done = 0

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
        self.listing_done += 1
        for match in self.pattern.finditer(response.text):
            item = {"page": page}
            for name in self.fields:
                item[name] = html.unescape(match.group(name) or "").strip()
            if self.detail is None:
                yield item
            else:
                self.listed += 1
                item["url"] = response.urljoin(item["url"])
                yield response.follow(item["url"], callback=self.parse_detail, cb_kwargs={"item": item})

    def parse_detail(self, response, item):
        self.detail_done += 1
        text = response.text
        match = self.detail.search(text)
        if match is None:
            self.logger.warning("no match on %s", response.url)
            return
        for name in self.detail_fields:
            item[name] = html.unescape(match.group(name) or "").strip()
        if self.tags is not None:
            item["tags"] = [html.unescape(m.group("tags")).strip() for m in self.tags.finditer(text)]
        yield item


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pattern", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--detail-pattern")
    parser.add_argument("--tags-pattern")
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
    process.crawl(
        crawler,
        url=args.url,
        pages=args.pages,
        pattern=args.pattern,
        detail_pattern=args.detail_pattern,
        tags_pattern=args.tags_pattern,
    )
    process.start()
    elapsed = time.monotonic() - started
    stats = crawler.stats.get_stats()
    items = stats.get("item_scraped_count", 0)
    spider = crawler.spider
    # Pages whose callback ran, both stages; a listing page short, or (with
    # detail pages) an item whose detail page never came, is a failure.
    done = spider.listing_done + spider.detail_done
    failed = args.pages - spider.listing_done
    if args.detail_pattern:
        failed += spider.listed - spider.detail_done
    print(f"pages={done} failed={failed} items={items} seconds={elapsed:.3f}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
