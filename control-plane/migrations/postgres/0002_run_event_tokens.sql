-- Each run event records the fencing token of the lease it was written under (ADR 0011), so
-- that a run's events show no write from a superseded owner. Earlier events: 0.
ALTER TABLE run_events ADD COLUMN fencing_token BIGINT NOT NULL DEFAULT 0 CHECK (fencing_token >= 0);
