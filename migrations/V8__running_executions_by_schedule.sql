-- The claim's overlap check ("is an execution of this schedule still running?") used the
-- (schedule_id, id) index and so read every past execution of the schedule, a cost that grows
-- forever. A partial index holds only the running ones.
CREATE INDEX executions_running_schedule_idx ON scheduler.executions (schedule_id)
    WHERE status = 'running';
