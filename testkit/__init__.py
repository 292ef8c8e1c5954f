"""What the tests and the benchmark both run the mirror against: the fake Docker Hub
(`fakeupstream`), the real distribution upstream with its token server (`upstream`,
`tokenserver`), OCI image layouts to seed it (`layout`), the mirror as a process (`mirrorproc`
for asyncio, `mirrorserver` for synchronous callers), a private CA (`tls`) and an isolated
skopeo (`skopeo`). Test-only fixtures stay in `tests/`; `bench/` imports only from here."""
