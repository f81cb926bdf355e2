-- 0008_keypackage_suite_last_resort: a device keeps one last-resort
-- KeyPackage per cipher suite it stocks (docs/mls.md, "Negotiation"), so
-- the uniqueness of the last resort is per (device, suite).

DROP INDEX keypackages_one_last_resort;
CREATE UNIQUE INDEX keypackages_one_last_resort ON keypackages (device_id, suite) WHERE last_resort = 1;
