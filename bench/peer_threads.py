#!/usr/bin/env python3
"""The crawler people hand-write: a pool of threads, one `requests.Session`
(keep-alive) per thread, a regular expression, JSON Lines out.

It is a peer for `pagecrawl-bench --peers`, written the usual way and no
slower than it needs to be: no resumability, no checkpoint, no fsync, a
simple retry loop. Prints `pages=N failed=N items=N seconds=S` at the end.

    python3 bench/peer_threads.py --url 'http://127.0.0.1:PORT/wooyun/bugs.php?page={page}' \
        --pages 2000 --concurrency 16 --pattern '...' --out items.jsonl
"""

import argparse
import html
import json
import queue
import re
import sys
import threading
import time

import requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="URL template with {page}")
    parser.add_argument("--pages", type=int, required=True, help="crawl pages 1..=N")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pattern", required=True, help="regex with named groups")
    parser.add_argument("--out", required=True)
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()

    pattern = re.compile(args.pattern)
    fields = list(pattern.groupindex)
    pages = queue.Queue()
    for page in range(1, args.pages + 1):
        pages.put(page)
    lock = threading.Lock()
    counts = {"pages": 0, "failed": 0, "items": 0}
    out = open(args.out, "w", encoding="utf-8")

    def worker():
        session = requests.Session()
        session.trust_env = False  # never a proxy: the site is on 127.0.0.1
        while True:
            try:
                page = pages.get_nowait()
            except queue.Empty:
                return
            url = args.url.replace("{page}", str(page))
            text = None
            for attempt in range(args.retries + 1):
                try:
                    response = session.get(url, timeout=30)
                    response.raise_for_status()
                    text = response.text
                    break
                except requests.RequestException:
                    time.sleep(0.1 * 2**attempt)
            if text is None:
                with lock:
                    counts["failed"] += 1
                continue
            lines = []
            for match in pattern.finditer(text):
                item = {"page": page}
                for name in fields:
                    item[name] = html.unescape(match.group(name) or "").strip()
                lines.append(json.dumps(item, ensure_ascii=False))
            with lock:
                if lines:
                    out.write("\n".join(lines) + "\n")
                counts["pages"] += 1
                counts["items"] += len(lines)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.close()
    elapsed = time.monotonic() - started
    print(
        f"pages={counts['pages']} failed={counts['failed']} items={counts['items']} seconds={elapsed:.3f}"
    )
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
