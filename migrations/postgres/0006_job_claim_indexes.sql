-- Claims look for due pending jobs in run_at order and, apart, for running jobs whose lease
-- ran out: one partial index each, so neither reads the done and dead rows of a busy queue.
CREATE INDEX jobs_pending_run_at ON jobs (run_at) WHERE state = 'pending';
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE state = 'running';
