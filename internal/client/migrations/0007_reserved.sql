-- 0007 is another branch's step (issue 19 work merged separately); this
-- placeholder only keeps the versions gap-free until that step is merged,
-- and is dropped then.
SELECT 1;
