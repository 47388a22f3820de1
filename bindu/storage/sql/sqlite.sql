-- SQLite statements for bindu.storage.sqlite, loaded by bindu.storage.queries.
-- Times are TEXT in one fixed-width UTC form (2026-01-02T03:04:05.000006Z), so comparing
-- the text compares the instants. JSON is TEXT (decoded and checked in Python).
-- Lists arrive as one JSON array parameter and are unpacked with json_each.

-- name: create_version_table
CREATE TABLE IF NOT EXISTS bindu_schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
);

-- name: schema_versions
SELECT version FROM bindu_schema_version ORDER BY version;

-- name: record_schema_version
INSERT INTO bindu_schema_version (version, applied_at) VALUES (:version, :applied_at);

-- migration: 1
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    context_id TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX tasks_context_created ON tasks (context_id, created_at, id);
CREATE INDEX tasks_created ON tasks (created_at, id);
CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    pay_to TEXT NOT NULL,
    payer TEXT NOT NULL,
    amount TEXT NOT NULL,
    nonce TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    payload TEXT,
    requirements TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    settle_tx TEXT,
    error TEXT,
    answers TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_check_at TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    receipt TEXT,
    verdict_at TEXT,
    -- Values are stored lower-cased, so this also refuses a replay in different hex case.
    CONSTRAINT payments_authorization UNIQUE (network, asset, payer, nonce)
);
CREATE INDEX payments_task ON payments (task_id, created_at, id);
CREATE INDEX payments_created ON payments (created_at, id);
-- The reconciler's candidates; the status list must match claim_due_payments verbatim
-- or SQLite will not prove the query implies the index predicate.
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN ('payment-verified', 'payment-failed');

-- migration: 2
-- Issue 5: the fulfil policy's payment-fulfilling joins the reconciler's candidates, an
-- operator's refund is kept on the record, gauges read counts per status cheaply, and
-- A2A push notification configs get a table. Nothing is dropped but an index, rebuilt.
ALTER TABLE payments ADD COLUMN refund TEXT;
DROP INDEX payments_due;
-- As in migration 1: the status list must match claim_due_payments verbatim.
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN ('payment-verified', 'payment-failed', 'payment-fulfilling');
-- payment_stats: count and oldest created_at per status from the index alone.
CREATE INDEX payments_status_created ON payments (status, created_at);
CREATE TABLE push_configs (
    task_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- migration: 3
-- Issue 9: the payment lifecycle's own statuses. A queued payment (payment-verified)
-- belongs to the task queue, no longer to the reconciler; a worker's settle in flight is
-- payment-settling and a settled payment whose work is not delivered yet payment-settled,
-- each the reconciler's once due. A payment-verified row whose task already left
-- 'submitted' may have had its settle in flight when the old code stopped: it becomes
-- payment-settling, due now at the latest (now in the fixed-width form of stored times).
UPDATE payments
SET status = 'payment-settling',
    next_check_at = min(
        coalesce(next_check_at, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
        strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')
    )
WHERE status = 'payment-verified'
    AND NOT EXISTS (
        SELECT 1 FROM tasks WHERE tasks.id = payments.task_id AND tasks.state = 'submitted'
    );
DROP INDEX payments_due;
-- As in migration 1: the status list must match claim_due_payments verbatim.
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN (
        'payment-settling', 'payment-settled', 'payment-failed', 'payment-fulfilling'
    );

-- migration: 4
-- Issue 9: the tasks table is the durable queue. A worker leases a task (owner and
-- expiry); a submitted task whose lease is free or expired is due, and so is a working
-- task whose lease expired (the process running it died). A working task with no lease
-- at all is owned by its payment's status (the reconciler), never by the queue.
ALTER TABLE tasks ADD COLUMN lease_owner TEXT;
ALTER TABLE tasks ADD COLUMN lease_expires_at TEXT;
-- The state list must match claim_due_tasks and count_queued verbatim (see payments_due).
CREATE INDEX tasks_queue ON tasks (created_at, id) WHERE state IN ('submitted', 'working');

-- migration: 5
-- The durable outbox (issue 9): push notifications and operator alerts, written in the
-- transaction of the change they report, delivered by the outbox service. A stream (one
-- task's pushes, one task's alerts) goes out in seq order; key makes each event once.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    stream TEXT NOT NULL,
    task_id TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_at TEXT,
    finished_at TEXT
);
-- A stream's head (its oldest pending event) and the due heads, from the index alone.
CREATE INDEX outbox_pending_stream ON outbox (stream, seq) WHERE status = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX outbox_task ON outbox (task_id, seq);

-- migration: 6
-- Issue 9: the refund ledger. One refund transaction per (network, tx), enforced here: the
-- row is inserted in the transaction that records payment-refunded, so two operators can
-- never book one transfer as the refund of two orphans. Refunds recorded before this
-- migration are carried over (the first one wins if an old scan let a hash in twice).
CREATE TABLE refund_txs (
    network TEXT NOT NULL,
    tx TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (network, tx)
);
INSERT OR IGNORE INTO refund_txs (network, tx, payment_id, recorded_at)
SELECT network, lower(json_extract(refund, '$.transaction')), id, updated_at
FROM payments
WHERE refund IS NOT NULL AND json_valid(refund)
    AND json_type(refund, '$.transaction') = 'text'
ORDER BY updated_at, id;

-- migration: 7
-- Issue 10: who owns a task (an authenticated principal such as key:alice, jwt:<sub> or
-- wallet:0x…; for an anonymous paid task the payer's wallet; NULL for an anonymous unpaid
-- one). Written when the task is inserted and never changed afterwards: no update touches
-- it. tasks/list of a principal reads this index.
ALTER TABLE tasks ADD COLUMN owner TEXT;
CREATE INDEX tasks_owner_created ON tasks (owner, created_at, id);

-- name: insert_task
INSERT INTO tasks (id, context_id, state, data, created_at, updated_at, owner)
VALUES (:id, :context_id, :state, :data, :now, :now, :owner)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: update_task
UPDATE tasks
SET context_id = :context_id, state = :state, data = :data, updated_at = :now
WHERE id = :id
RETURNING id;

-- name: upsert_task
INSERT INTO tasks (id, context_id, state, data, created_at, updated_at, owner)
VALUES (:id, :context_id, :state, :data, :now, :now, :owner)
ON CONFLICT (id) DO UPDATE SET
    context_id = excluded.context_id,
    state = excluded.state,
    data = excluded.data,
    updated_at = excluded.updated_at;

-- name: get_task
SELECT data, owner FROM tasks WHERE id = :id;

-- name: list_tasks
SELECT data, owner FROM tasks
WHERE (:state IS NULL OR state = :state)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: list_tasks_for_context
SELECT data, owner FROM tasks
WHERE context_id = :context_id AND (:state IS NULL OR state = :state)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: list_owner_tasks
SELECT data, owner FROM tasks
WHERE owner = :owner AND (:state IS NULL OR state = :state)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: list_owner_tasks_for_context
SELECT data, owner FROM tasks
WHERE owner = :owner AND context_id = :context_id
    AND (:state IS NULL OR state = :state)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: claim_payment
INSERT INTO payments (
    id, task_id, status, network, asset, pay_to, payer, amount, nonce,
    valid_after, valid_before, payload, requirements, created_at, updated_at,
    settle_tx, error, answers, attempts, next_check_at, lease_owner, lease_expires_at,
    receipt, verdict_at, refund
) VALUES (
    :id, :task_id, :status, :network, :asset, :pay_to, :payer, :amount, :nonce,
    :valid_after, :valid_before, :payload, :requirements, :created_at, :updated_at,
    :settle_tx, :error, :answers, :attempts, :next_check_at, :lease_owner, :lease_expires_at,
    :receipt, :verdict_at, :refund
)
ON CONFLICT (network, asset, payer, nonce) DO NOTHING
RETURNING id;

-- name: release_claim
DELETE FROM payments WHERE id = :id AND status = 'claimed';

-- name: get_payment
SELECT * FROM payments WHERE id = :id;

-- name: get_payment_for_task
SELECT * FROM payments WHERE task_id = :task_id ORDER BY created_at DESC, id DESC LIMIT 1;

-- name: transition_payment
-- The compare-and-set is the WHERE clause: a writer that lost the race matches no row.
-- Appending to an undecodable answers value starts a fresh list instead of failing, so
-- a corrupt record can still be moved to a final status.
UPDATE payments SET
    status = coalesce(:status, status),
    settle_tx = coalesce(:settle_tx, settle_tx),
    error = CASE WHEN :error IS NOT NULL THEN :error WHEN :clear_error THEN NULL ELSE error END,
    answers = CASE
        WHEN :answer IS NULL THEN answers
        ELSE json_insert(
            CASE WHEN json_valid(answers)
                THEN CASE WHEN json_type(answers) = 'array' THEN answers ELSE '[]' END
                ELSE '[]'
            END,
            '$[#]', json(:answer))
    END,
    attempts = coalesce(:attempts, attempts),
    next_check_at = CASE
        WHEN :clear_next_check THEN NULL ELSE coalesce(:next_check_at, next_check_at)
    END,
    receipt = coalesce(:receipt, receipt),
    verdict_at = coalesce(:verdict_at, verdict_at),
    refund = coalesce(:refund, refund),
    lease_owner = CASE
        WHEN :release_lease THEN NULL ELSE coalesce(:lease_to, lease_owner)
    END,
    lease_expires_at = CASE
        WHEN :release_lease THEN NULL
        WHEN :lease_to IS NOT NULL THEN :lease_until
        ELSE lease_expires_at
    END,
    updated_at = :updated_at
WHERE id = :id
    AND status IN (SELECT value FROM json_each(:expected))
    AND (:lease_owner IS NULL OR lease_owner = :lease_owner)
RETURNING *;

-- name: claim_due_payments
-- Run inside BEGIN IMMEDIATE: the write lock makes select-and-lease one step across
-- processes (SQLite has no SKIP LOCKED). INDEXED BY pins the partial index payments_due:
-- without statistics the planner would rather search payments_status_created and sort
-- every open record, and a predicate that no longer matches the index is an error here,
-- not a silent scan. The status list is OPEN_STATUSES (a conformance test holds the two
-- together).
UPDATE payments
SET lease_owner = :owner, lease_expires_at = :lease_expires_at
WHERE id IN (
    SELECT id FROM payments INDEXED BY payments_due
    WHERE status IN (
        'payment-settling', 'payment-settled', 'payment-failed', 'payment-fulfilling'
    )
        AND next_check_at IS NOT NULL
        AND next_check_at <= :now
        AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
    ORDER BY next_check_at, id
    LIMIT :limit
)
RETURNING *;

-- name: sweep_claims
-- Claims whose /verify never answered (the process died mid-verify): no settle was ever
-- sent and no task exists, so the row is deleted and the nonce freed. INDEXED BY pins
-- payments_status_created (status, created_at): never a scan of the table.
DELETE FROM payments
WHERE id IN (
    SELECT id FROM payments INDEXED BY payments_status_created
    WHERE status = 'claimed' AND created_at < :created_before
    ORDER BY created_at
    LIMIT :limit
)
    AND status = 'claimed'
RETURNING id;

-- name: list_payments
SELECT * FROM payments
WHERE (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
    AND (:created_before IS NULL OR created_at < :created_before)
ORDER BY created_at, id
LIMIT :limit OFFSET :offset;

-- name: count_payments
SELECT status, count(*) AS n FROM payments GROUP BY status;

-- name: payment_stats
-- A covering scan of payments_status_created: the table itself is not read.
SELECT status, count(*) AS n, min(created_at) AS oldest FROM payments GROUP BY status;

-- name: set_push_config
INSERT INTO push_configs (task_id, config, updated_at)
VALUES (:task_id, :config, :now)
ON CONFLICT (task_id) DO UPDATE SET
    config = excluded.config,
    updated_at = excluded.updated_at;

-- name: get_push_config
SELECT config FROM push_configs WHERE task_id = :task_id;

-- name: insert_outbox_event
-- A push event is kept only while its task has a push config (nobody to tell otherwise);
-- a key already present keeps the first event (once per task and state, per verdict).
INSERT INTO outbox (key, kind, stream, task_id, body, created_at, next_attempt_at)
SELECT :key, :kind, :stream, :task_id, :body, :now, :now
WHERE :kind <> 'push' OR EXISTS (SELECT 1 FROM push_configs WHERE task_id = :task_id)
ON CONFLICT (key) DO NOTHING;

-- name: claim_outbox
-- Run inside BEGIN IMMEDIATE (as claim_due_payments). Only a stream's head is eligible:
-- while it is leased or waiting for its retry, the events behind it wait too.
UPDATE outbox
SET lease_owner = :owner, lease_expires_at = :lease_expires_at
WHERE seq IN (
    SELECT o.seq FROM outbox AS o
    WHERE o.status = 'pending'
        AND o.next_attempt_at <= :now
        AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= :now)
        AND NOT EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.stream = o.stream AND p.status = 'pending' AND p.seq < o.seq
        )
    ORDER BY o.next_attempt_at, o.seq
    LIMIT :limit
)
RETURNING *;

-- name: finish_outbox
UPDATE outbox
SET status = :status, error = :error, attempts = attempts + 1, finished_at = :now,
    lease_owner = NULL, lease_expires_at = NULL
WHERE seq = :seq AND status = 'pending' AND lease_owner = :owner
RETURNING seq;

-- name: retry_outbox
UPDATE outbox
SET error = :error, attempts = attempts + :counted, next_attempt_at = :next_attempt_at,
    lease_owner = NULL, lease_expires_at = NULL
WHERE seq = :seq AND status = 'pending' AND lease_owner = :owner
RETURNING seq;

-- name: list_outbox
SELECT * FROM outbox
WHERE (:task_id IS NULL OR task_id = :task_id) AND (:status IS NULL OR status = :status)
ORDER BY seq
LIMIT :limit OFFSET :offset;

-- name: record_refund_tx
-- Inside transition_payment's transaction: no row back means another payment holds it.
INSERT INTO refund_txs (network, tx, payment_id, recorded_at)
VALUES (:network, :tx, :payment_id, :now)
ON CONFLICT (network, tx) DO NOTHING
RETURNING payment_id;

-- name: refund_tx_holder
SELECT payment_id FROM refund_txs WHERE network = :network AND tx = :tx;

-- name: claim_due_tasks
-- Run inside BEGIN IMMEDIATE (as claim_due_payments): select-and-lease is one step
-- across processes. INDEXED BY pins tasks_queue.
UPDATE tasks
SET lease_owner = :owner, lease_expires_at = :lease_expires_at
WHERE id IN (
    SELECT id FROM tasks INDEXED BY tasks_queue
    WHERE state IN ('submitted', 'working')
        AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
        AND (state = 'submitted' OR lease_owner IS NOT NULL)
    ORDER BY created_at, id
    LIMIT :limit
)
RETURNING created_at, id, data, owner;

-- name: renew_task_lease
UPDATE tasks SET lease_expires_at = :lease_expires_at
WHERE id = :id AND lease_owner = :owner AND state IN ('submitted', 'working')
RETURNING id;

-- name: release_task_lease
UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_owner = :owner
RETURNING id;

-- name: transition_task
-- The compare-and-set on a task's state (and lease, when an owner is named).
UPDATE tasks
SET context_id = :context_id, state = :state, data = :data, updated_at = :now
WHERE id = :id
    AND state IN (SELECT value FROM json_each(:expected))
    AND (:lease_owner IS NULL OR lease_owner = :lease_owner)
RETURNING id;

-- name: count_queued
SELECT count(*) AS n FROM tasks INDEXED BY tasks_queue
WHERE state IN ('submitted', 'working') AND state = 'submitted';
