"""SecChat's directory service (thesis §4.1-4.2): participants' certificates and contact addresses,
and creator-signed conference records, behind an HTTP API that nobody has to trust.

* :mod:`.models` -- request / public models and the signed records (conference, contact address);
* :mod:`.auth` -- the request-signing scheme shared by client and server;
* :mod:`.storage` -- all SQL (SQLAlchemy Core; SQLite by default, PostgreSQL by URL);
* :mod:`.server` -- the Starlette app (``create_app``), :mod:`.openapi` its description;
* :mod:`.client` -- ``DirectoryClient`` / ``AsyncDirectoryClient``, which verify everything;
* :mod:`.trust` -- the user's accepted certificates;
* :mod:`.cli` -- ``secchat directory serve | register | participants | trust``.

A malicious directory can refuse service; it cannot add a member, swap a certificate, change a
time frame or drop the creator's signature without the client refusing the record.
"""
