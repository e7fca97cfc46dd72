"""Transfer and call records: events (:mod:`.events`), the Redis writer with its durable spool
(:mod:`.store`), the KPI report (:mod:`.report`). See docs/records.md."""
