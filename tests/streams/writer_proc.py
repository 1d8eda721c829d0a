"""A writer process for the crash tests: appends forever and prints each sequence number once append returned."""

from __future__ import annotations

import sys

from gateway.streams.embedded import EmbeddedStore


def main() -> None:
    root, stream, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    store = EmbeddedStore(root)
    i = 0
    while True:
        payload = f"{tag}:{i}:".encode() + b"p" * (i % 700)
        seq = store.append(stream, payload)
        sys.stdout.write(f"{seq} {tag}:{i}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    main()
