"""`mirror export` and `mirror import`: carrying cached images to an air-gapped mirror.

`mirror export IMAGE... -o bundle.tar` writes what the cache holds for the images (their
manifests, configs and layers, every platform of an index unless `--platform` says which,
chosen as `mirror prefetch --platform` chooses them: see `mirror.platforms`) as an OCI
image layout in a tar, plus the mirror's tag records. `mirror import bundle.tar`
reads it on the other side, entry by entry, into the store's verified writers (nothing is
visible before a writer commits); only when every entry matches its digest and everything
the bundle names is in it is anything committed. A bad bundle leaves the cache as it was.

The bundle (a plain tar, entries in this order):

    oci-layout          {"imageLayoutVersion": "1.0.0"}
    index.json          an OCI index with one descriptor per exported image, its
                        `org.opencontainers.image.ref.name` the full reference
                        (`docker.io/library/alpine:3.19`)
    mirror/tags.json    what the mirror needs besides content (see `TAGS_VERSION`): the
                        images, their tag records for every Accept class the exporting
                        mirror had, the media type of every manifest, and the index
                        children `--platform` left out
    blobs/<alg>/<hex>   every manifest, config and layer, once

Both commands work on a data dir whether or not a server runs on it: export only reads
content that never changes once written, and import publishes content the way the server
does (through the store's verified writer) before it writes any tag record.

The package, by job: `cli` (the two commands), `export` (what to write, and writing it),
`archive` (reading a bundle into the store's writers, each verified), `check` (what the
bundle's metadata names is all there), `commit` (staged content into the store, then tag
records), `progress`, and `layout` (the format's names and limits).
"""

from mirror.admin.bundle.cli import add_parsers

__all__ = ["add_parsers"]
