-- Postgres statements for bindu.storage.postgres, loaded by bindu.storage.queries.
-- Tables are created unqualified: each connection's search_path is the configured schema.
-- Values are always bound parameters; the only other substitution is {schema}, filled
-- with psycopg.sql.Identifier (the schema name is validated as an identifier in settings).
-- Casts on parameters pin their types so a NULL parameter is never ambiguous.

-- name: set_search_path
SET search_path TO {schema};

-- name: set_utc
SET TIME ZONE 'UTC';

-- name: migration_lock
-- Transaction-scoped: replicas starting together migrate one after another.
SELECT pg_advisory_xact_lock(%(key)s::bigint);

-- name: schema_exists
-- Checked first so an existing schema needs no CREATE privilege on the database.
SELECT 1 AS found FROM pg_namespace WHERE nspname = %(schema)s::text;

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: create_version_table
CREATE TABLE IF NOT EXISTS bindu_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL
);

-- name: schema_versions
SELECT version FROM bindu_schema_version ORDER BY version;

-- name: record_schema_version
INSERT INTO bindu_schema_version (version, applied_at)
VALUES (%(version)s::integer, %(applied_at)s::timestamptz);

-- migration: 1
CREATE TABLE tasks (
    id text PRIMARY KEY,
    context_id text NOT NULL,
    state text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX tasks_context_created ON tasks (context_id, created_at, id);
CREATE INDEX tasks_created ON tasks (created_at, id);
CREATE TABLE payments (
    id text PRIMARY KEY,
    task_id text NOT NULL,
    status text NOT NULL,
    network text NOT NULL,
    asset text NOT NULL,
    pay_to text NOT NULL,
    payer text NOT NULL,
    amount text NOT NULL,
    nonce text NOT NULL,
    valid_after bigint NOT NULL,
    valid_before bigint NOT NULL,
    payload jsonb,
    requirements jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    settle_tx text,
    error text,
    answers jsonb NOT NULL DEFAULT '[]'::jsonb,
    attempts integer NOT NULL DEFAULT 0,
    next_check_at timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    receipt jsonb,
    verdict_at timestamptz,
    -- Values are stored lower-cased, so this also refuses a replay in different hex case.
    CONSTRAINT payments_authorization UNIQUE (network, asset, payer, nonce)
);
CREATE INDEX payments_task ON payments (task_id, created_at, id);
CREATE INDEX payments_created ON payments (created_at, id);
-- The reconciler's candidates; claim_due_payments repeats this predicate so the
-- planner can prove the partial index applies.
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN ('payment-verified', 'payment-failed');

-- migration: 2
-- Issue 5: the fulfil policy's payment-fulfilling joins the reconciler's candidates, an
-- operator's refund is kept on the record, gauges read counts per status cheaply, and
-- A2A push notification configs get a table. Nothing is dropped but an index, rebuilt.
ALTER TABLE payments ADD COLUMN refund jsonb;
DROP INDEX payments_due;
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN ('payment-verified', 'payment-failed', 'payment-fulfilling');
-- payment_stats: count and oldest created_at per status from the index.
CREATE INDEX payments_status_created ON payments (status, created_at);
CREATE TABLE push_configs (
    task_id text PRIMARY KEY,
    config jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);

-- migration: 3
-- Issue 9: the payment lifecycle's own statuses. A queued payment (payment-verified)
-- belongs to the task queue, no longer to the reconciler; a worker's settle in flight is
-- payment-settling and a settled payment whose work is not delivered yet payment-settled,
-- each the reconciler's once due. A payment-verified row whose task already left
-- 'submitted' may have had its settle in flight when the old code stopped: it becomes
-- payment-settling, due now at the latest.
UPDATE payments
SET status = 'payment-settling', next_check_at = least(coalesce(next_check_at, now()), now())
WHERE status = 'payment-verified'
    AND NOT EXISTS (
        SELECT 1 FROM tasks WHERE tasks.id = payments.task_id AND tasks.state = 'submitted'
    );
DROP INDEX payments_due;
CREATE INDEX payments_due ON payments (next_check_at, id)
    WHERE status IN (
        'payment-settling', 'payment-settled', 'payment-failed', 'payment-fulfilling'
    );

-- migration: 4
-- Issue 9: the tasks table is the durable queue. A worker leases a task (owner and
-- expiry); a submitted task whose lease is free or expired is due, and so is a working
-- task whose lease expired (the process running it died). A working task with no lease
-- at all is owned by its payment's status (the reconciler), never by the queue.
ALTER TABLE tasks ADD COLUMN lease_owner text;
ALTER TABLE tasks ADD COLUMN lease_expires_at timestamptz;
CREATE INDEX tasks_queue ON tasks (created_at, id) WHERE state IN ('submitted', 'working');

-- migration: 5
-- The durable outbox (issue 9): push notifications and operator alerts, written in the
-- transaction of the change they report, delivered by the outbox service. A stream (one
-- task's pushes, one task's alerts) goes out in seq order; key makes each event once.
CREATE TABLE outbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL UNIQUE,
    kind text NOT NULL,
    stream text NOT NULL,
    task_id text,
    body jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    lease_owner text,
    lease_expires_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX outbox_pending_stream ON outbox (stream, seq) WHERE status = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX outbox_task ON outbox (task_id, seq);

-- migration: 6
-- Issue 9: the refund ledger. One refund transaction per (network, tx), enforced here: the
-- row is inserted in the transaction that records payment-refunded, so two operators can
-- never book one transfer as the refund of two orphans (the second insert waits for the
-- first transaction, then finds the key taken). Refunds recorded before this migration
-- are carried over (the first one wins if an old scan let a hash in twice).
CREATE TABLE refund_txs (
    network text NOT NULL,
    tx text NOT NULL,
    payment_id text NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (network, tx)
);
INSERT INTO refund_txs (network, tx, payment_id, recorded_at)
SELECT network, lower(refund ->> 'transaction'), id, updated_at
FROM payments
WHERE jsonb_typeof(refund) = 'object' AND jsonb_typeof(refund -> 'transaction') = 'string'
ORDER BY updated_at, id
ON CONFLICT (network, tx) DO NOTHING;

-- migration: 7
-- Issue 10: who owns a task (an authenticated principal such as key:alice, jwt:<sub> or
-- wallet:0x…; for an anonymous paid task the payer's wallet; NULL for an anonymous unpaid
-- one). Written when the task is inserted and never changed afterwards: no update touches
-- it. tasks/list of a principal reads this index.
ALTER TABLE tasks ADD COLUMN owner text;
CREATE INDEX tasks_owner_created ON tasks (owner, created_at, id);

-- name: insert_task
INSERT INTO tasks (id, context_id, state, data, created_at, updated_at, owner)
VALUES (%(id)s, %(context_id)s, %(state)s, %(data)s, %(now)s, %(now)s, %(owner)s)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: update_task
UPDATE tasks
SET context_id = %(context_id)s, state = %(state)s, data = %(data)s, updated_at = %(now)s
WHERE id = %(id)s
RETURNING id;

-- name: upsert_task
INSERT INTO tasks (id, context_id, state, data, created_at, updated_at, owner)
VALUES (%(id)s, %(context_id)s, %(state)s, %(data)s, %(now)s, %(now)s, %(owner)s)
ON CONFLICT (id) DO UPDATE SET
    context_id = EXCLUDED.context_id,
    state = EXCLUDED.state,
    data = EXCLUDED.data,
    updated_at = EXCLUDED.updated_at;

-- name: get_task
SELECT data, owner FROM tasks WHERE id = %(id)s;

-- name: list_tasks
SELECT data, owner FROM tasks
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
ORDER BY created_at, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_tasks_for_context
SELECT data, owner FROM tasks
WHERE context_id = %(context_id)s AND (%(state)s::text IS NULL OR state = %(state)s::text)
ORDER BY created_at, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_owner_tasks
SELECT data, owner FROM tasks
WHERE owner = %(owner)s AND (%(state)s::text IS NULL OR state = %(state)s::text)
ORDER BY created_at, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_owner_tasks_for_context
SELECT data, owner FROM tasks
WHERE owner = %(owner)s AND context_id = %(context_id)s
    AND (%(state)s::text IS NULL OR state = %(state)s::text)
ORDER BY created_at, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: claim_payment
INSERT INTO payments (
    id, task_id, status, network, asset, pay_to, payer, amount, nonce,
    valid_after, valid_before, payload, requirements, created_at, updated_at,
    settle_tx, error, answers, attempts, next_check_at, lease_owner, lease_expires_at,
    receipt, verdict_at, refund
) VALUES (
    %(id)s, %(task_id)s, %(status)s, %(network)s, %(asset)s, %(pay_to)s, %(payer)s,
    %(amount)s, %(nonce)s, %(valid_after)s, %(valid_before)s, %(payload)s,
    %(requirements)s, %(created_at)s, %(updated_at)s, %(settle_tx)s, %(error)s,
    %(answers)s, %(attempts)s, %(next_check_at)s, %(lease_owner)s, %(lease_expires_at)s,
    %(receipt)s, %(verdict_at)s, %(refund)s
)
ON CONFLICT (network, asset, payer, nonce) DO NOTHING
RETURNING id;

-- name: release_claim
DELETE FROM payments WHERE id = %(id)s AND status = 'claimed';

-- name: get_payment
SELECT * FROM payments WHERE id = %(id)s;

-- name: get_payment_for_task
SELECT * FROM payments
WHERE task_id = %(task_id)s
ORDER BY created_at DESC, id DESC
LIMIT 1;

-- name: transition_payment
-- The compare-and-set is the WHERE clause: a writer that lost the race matches no row
-- (a concurrent writer's UPDATE waits on the row lock, then re-checks the WHERE).
-- Appending to answers of the wrong shape starts a fresh list instead of failing, so a
-- corrupt record can still be moved to a final status.
UPDATE payments SET
    status = coalesce(%(status)s::text, status),
    settle_tx = coalesce(%(settle_tx)s::text, settle_tx),
    error = CASE
        WHEN %(error)s::text IS NOT NULL THEN %(error)s::text
        WHEN %(clear_error)s::boolean THEN NULL
        ELSE error
    END,
    answers = CASE
        WHEN %(answer)s::jsonb IS NULL THEN answers
        ELSE (CASE WHEN jsonb_typeof(answers) = 'array' THEN answers ELSE '[]'::jsonb END)
            || jsonb_build_array(%(answer)s::jsonb)
    END,
    attempts = coalesce(%(attempts)s::integer, attempts),
    next_check_at = CASE
        WHEN %(clear_next_check)s::boolean THEN NULL
        ELSE coalesce(%(next_check_at)s::timestamptz, next_check_at)
    END,
    receipt = coalesce(%(receipt)s::jsonb, receipt),
    verdict_at = coalesce(%(verdict_at)s::timestamptz, verdict_at),
    refund = coalesce(%(refund)s::jsonb, refund),
    lease_owner = CASE
        WHEN %(release_lease)s::boolean THEN NULL
        ELSE coalesce(%(lease_to)s::text, lease_owner)
    END,
    lease_expires_at = CASE
        WHEN %(release_lease)s::boolean THEN NULL
        WHEN %(lease_to)s::text IS NOT NULL THEN %(lease_until)s::timestamptz
        ELSE lease_expires_at
    END,
    updated_at = %(updated_at)s::timestamptz
WHERE id = %(id)s::text
    AND status = ANY(%(expected)s::text[])
    AND (%(lease_owner)s::text IS NULL OR lease_owner = %(lease_owner)s::text)
RETURNING *;

-- name: claim_due_payments
-- SKIP LOCKED lets concurrent reconcilers pass over rows another one is leasing right
-- now; a row leased and committed meanwhile fails the re-checked WHERE (its lease is
-- no longer expired). Uses the partial index payments_due; the status list is
-- OPEN_STATUSES (a conformance test holds the two together).
WITH due AS (
    SELECT id FROM payments
    WHERE status IN (
        'payment-settling', 'payment-settled', 'payment-failed', 'payment-fulfilling'
    )
        AND next_check_at IS NOT NULL
        AND next_check_at <= %(now)s::timestamptz
        AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s::timestamptz)
    ORDER BY next_check_at, id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
)
UPDATE payments AS p
SET lease_owner = %(owner)s::text, lease_expires_at = %(lease_expires_at)s::timestamptz
FROM due
WHERE p.id = due.id
RETURNING p.*;

-- name: sweep_claims
-- Claims whose /verify never answered (the process died mid-verify): no settle was ever
-- sent and no task exists, so the row is deleted and the nonce freed. Reads
-- payments_status_created (status, created_at); SKIP LOCKED passes over a claim being
-- moved to payment-verified right now.
WITH stale AS (
    SELECT id FROM payments
    WHERE status = 'claimed' AND created_at < %(created_before)s::timestamptz
    ORDER BY created_at
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
)
DELETE FROM payments AS p
USING stale
WHERE p.id = stale.id AND p.status = 'claimed'
RETURNING p.id;

-- name: list_payments
SELECT * FROM payments
WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
    AND (
        %(created_before)s::timestamptz IS NULL
        OR created_at < %(created_before)s::timestamptz
    )
ORDER BY created_at, id
LIMIT %(limit)s::integer OFFSET %(offset)s::integer;

-- name: count_payments
SELECT status, count(*) AS n FROM payments GROUP BY status;

-- name: payment_stats
SELECT status, count(*) AS n, min(created_at) AS oldest FROM payments GROUP BY status;

-- name: set_push_config
INSERT INTO push_configs (task_id, config, updated_at)
VALUES (%(task_id)s::text, %(config)s::jsonb, %(now)s::timestamptz)
ON CONFLICT (task_id) DO UPDATE SET
    config = EXCLUDED.config,
    updated_at = EXCLUDED.updated_at;

-- name: get_push_config
SELECT config FROM push_configs WHERE task_id = %(task_id)s::text;

-- name: insert_outbox_event
-- A push event is kept only while its task has a push config (nobody to tell otherwise);
-- a key already present keeps the first event (once per task and state, per verdict).
INSERT INTO outbox (key, kind, stream, task_id, body, created_at, next_attempt_at)
SELECT %(key)s::text, %(kind)s::text, %(stream)s::text, %(task_id)s::text,
    %(body)s::jsonb, %(now)s::timestamptz, %(now)s::timestamptz
WHERE %(kind)s::text <> 'push'
    OR EXISTS (SELECT 1 FROM push_configs WHERE task_id = %(task_id)s::text)
ON CONFLICT (key) DO NOTHING;

-- name: claim_outbox
-- Only a stream's head is eligible: while it is leased or waiting for its retry, the
-- events behind it wait too. SKIP LOCKED passes over heads another replica is leasing
-- right now; one leased and committed meanwhile fails the re-checked lease condition.
WITH due AS (
    SELECT o.seq FROM outbox AS o
    WHERE o.status = 'pending'
        AND o.next_attempt_at <= %(now)s::timestamptz
        AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= %(now)s::timestamptz)
        AND NOT EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.stream = o.stream AND p.status = 'pending' AND p.seq < o.seq
        )
    ORDER BY o.next_attempt_at, o.seq
    LIMIT %(limit)s::integer
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox AS t
SET lease_owner = %(owner)s::text, lease_expires_at = %(lease_expires_at)s::timestamptz
FROM due
WHERE t.seq = due.seq
RETURNING t.*;

-- name: finish_outbox
UPDATE outbox
SET status = %(status)s::text, error = %(error)s::text, attempts = attempts + 1,
    finished_at = %(now)s::timestamptz, lease_owner = NULL, lease_expires_at = NULL
WHERE seq = %(seq)s::bigint AND status = 'pending' AND lease_owner = %(owner)s::text
RETURNING seq;

-- name: retry_outbox
UPDATE outbox
SET error = %(error)s::text, attempts = attempts + %(counted)s::integer,
    next_attempt_at = %(next_attempt_at)s::timestamptz,
    lease_owner = NULL, lease_expires_at = NULL
WHERE seq = %(seq)s::bigint AND status = 'pending' AND lease_owner = %(owner)s::text
RETURNING seq;

-- name: list_outbox
SELECT * FROM outbox
WHERE (%(task_id)s::text IS NULL OR task_id = %(task_id)s::text)
    AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY seq
LIMIT %(limit)s::integer OFFSET %(offset)s::integer;

-- name: record_refund_tx
-- Inside transition_payment's transaction: no row back means another payment holds it.
INSERT INTO refund_txs (network, tx, payment_id, recorded_at)
VALUES (%(network)s, %(tx)s, %(payment_id)s, %(now)s)
ON CONFLICT (network, tx) DO NOTHING
RETURNING payment_id;

-- name: refund_tx_holder
SELECT payment_id FROM refund_txs WHERE network = %(network)s AND tx = %(tx)s;

-- name: claim_due_tasks
-- SKIP LOCKED: concurrent replicas pass over rows another one is leasing right now (as
-- claim_due_payments). Uses the partial index tasks_queue.
WITH due AS (
    SELECT id FROM tasks
    WHERE state IN ('submitted', 'working')
        AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s::timestamptz)
        AND (state = 'submitted' OR lease_owner IS NOT NULL)
    ORDER BY created_at, id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET lease_owner = %(owner)s::text, lease_expires_at = %(lease_expires_at)s::timestamptz
FROM due
WHERE t.id = due.id
RETURNING t.created_at, t.id, t.data, t.owner;

-- name: renew_task_lease
UPDATE tasks SET lease_expires_at = %(lease_expires_at)s::timestamptz
WHERE id = %(id)s::text AND lease_owner = %(owner)s::text
    AND state IN ('submitted', 'working')
RETURNING id;

-- name: release_task_lease
UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s::text AND lease_owner = %(owner)s::text
RETURNING id;

-- name: transition_task
-- The compare-and-set on a task's state (and lease, when an owner is named).
UPDATE tasks
SET context_id = %(context_id)s, state = %(state)s, data = %(data)s, updated_at = %(now)s
WHERE id = %(id)s::text
    AND state = ANY(%(expected)s::text[])
    AND (%(lease_owner)s::text IS NULL OR lease_owner = %(lease_owner)s::text)
RETURNING id;

-- name: count_queued
SELECT count(*) AS n FROM tasks
WHERE state IN ('submitted', 'working') AND state = 'submitted';
