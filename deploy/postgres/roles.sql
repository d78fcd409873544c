-- Run once by the postgres image when its data directory is new (Compose mounts
-- it into /docker-entrypoint-initdb.d). The roles that sql/grants.sql fills:
-- pme_writer for workers, pme_reader for reports; pme_report logs in as a reader
-- (Grafana's business dashboard). Change its password in production.
CREATE ROLE pme_writer NOLOGIN;
CREATE ROLE pme_reader NOLOGIN;
CREATE ROLE pme_report LOGIN PASSWORD 'pme_report' IN ROLE pme_reader;
