"""Prefetch: pulling images into the cache before anyone asks for them.

- `engine`: `prefetch_image` resolves an image (a tag or a digest) through the cache
  machinery, as a client pull would, and downloads every manifest and blob of it: all
  platforms of an index, or the ones `mirror.platforms` selects. Tags are always asked
  upstream (a HEAD, free on Docker Hub) whatever their freshness, unless a rule makes them
  immutable: a prefetch wants what the tag names now. Prefetches are not counted as pulls
  (the status page's most-pulled list is about clients), but their accesses are recorded
  like any other.
- `wiring`: the cache machinery a prefetch goes through, on a server's parts or built for
  a command on the data dir.
- `schedule`: the server's side, the configured `prefetch` list at start and then every
  `prefetch_interval` seconds, by one process of several (a metadata-store lock).
- `text`: how outcomes and errors read.

It is safe beside a running server on the same data dir: a blob is downloaded by one
process at a time (the store's download claims), and tag revalidations and manifest
fetches are shared through the metadata store's locks.
"""
