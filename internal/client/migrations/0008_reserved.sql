-- 0008_reserved: PLACEHOLDER so that 0009 applies on this branch. The
-- number belongs to another change; when that change's 0008 is merged,
-- delete this file (the runner refuses a gap, so 0009 needs an 0008).
SELECT 1;
