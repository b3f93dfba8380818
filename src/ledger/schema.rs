//! The ledger's schema and its migrations, applied in order inside one transaction each.

/// Each entry moves the schema from version i to i + 1.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        strategy TEXT NOT NULL,
        config TEXT NOT NULL,
        model_path TEXT NOT NULL,
        model_hash TEXT NOT NULL,
        knowledge_dir TEXT NOT NULL,
        knowledge_hash TEXT NOT NULL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL,
        base_weights_hash TEXT NOT NULL,
        weights_hash TEXT NOT NULL,
        finished TEXT
    );
    CREATE TABLE facts (
        hash TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        op TEXT NOT NULL,
        subject TEXT NOT NULL,
        answer TEXT NOT NULL,
        source TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE run_facts (
        run TEXT NOT NULL REFERENCES runs(id),
        ord INTEGER NOT NULL,
        fact TEXT NOT NULL REFERENCES facts(hash),
        PRIMARY KEY (run, fact)
    );
    CREATE TABLE steps (
        run TEXT NOT NULL REFERENCES runs(id),
        idx INTEGER NOT NULL,
        facts TEXT NOT NULL,
        rehearsed TEXT NOT NULL,
        optimizer_steps INTEGER NOT NULL,
        losses TEXT NOT NULL,
        seconds REAL NOT NULL,
        eval_seconds REAL NOT NULL,
        tokens INTEGER NOT NULL,
        peak_rss_bytes INTEGER NOT NULL,
        delta_file TEXT NOT NULL,
        rank_pattern TEXT NOT NULL,
        weights_hash TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (run, idx)
    );
    CREATE TABLE deltas (
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        module TEXT NOT NULL,
        rank INTEGER NOT NULL,
        file TEXT NOT NULL,
        PRIMARY KEY (run, step, module)
    );
    CREATE TABLE probes (
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        fact TEXT NOT NULL,
        recall REAL NOT NULL,
        general REAL,
        previous REAL,
        detail TEXT NOT NULL,
        PRIMARY KEY (run, step, fact)
    );
    CREATE TABLE generations (
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        fact TEXT NOT NULL,
        prompt TEXT NOT NULL,
        text TEXT NOT NULL,
        f1 REAL NOT NULL,
        PRIMARY KEY (run, step, fact, prompt)
    );
    CREATE TABLE locality (
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run, step)
    );
    CREATE TABLE locality_base (
        run TEXT NOT NULL,
        idx INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        prompt_ids TEXT NOT NULL,
        answer_ids TEXT NOT NULL,
        answer TEXT NOT NULL,
        PRIMARY KEY (run, idx)
    );
    CREATE INDEX probes_by_fact ON probes (run, fact);
    "#,
    // 2: comparisons of strategies.
    r#"
    CREATE TABLE comparisons (
        id TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        runs TEXT NOT NULL
    );
    "#,
    // 3: where the time goes: each step's phases, and each invocation's fixed costs.
    r#"
    ALTER TABLE steps ADD COLUMN phases TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE invocations (
        run TEXT NOT NULL REFERENCES runs(id),
        idx INTEGER NOT NULL,
        started TEXT NOT NULL,
        finished TEXT NOT NULL,
        steps INTEGER NOT NULL,
        seconds REAL NOT NULL,
        phases TEXT NOT NULL,
        PRIMARY KEY (run, idx)
    );
    "#,
    // 4: the base model's greedy answers, kept per model so later runs need not decode them again.
    r#"
    CREATE TABLE base_answers (
        model_hash TEXT NOT NULL,
        kind TEXT NOT NULL,
        prompts TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        answers TEXT NOT NULL,
        PRIMARY KEY (model_hash, kind, prompts, tokens)
    );
    "#,
    // 5: free-decoding recall beside the teacher-forced scores; why `spaced:K` rehearsed what it did;
    // each step's GPU memory peak; reverts (`injector revert`), with the steps they took back.
    r#"
    ALTER TABLE probes ADD COLUMN free_recall REAL;
    ALTER TABLE probes ADD COLUMN free_general REAL;
    ALTER TABLE steps ADD COLUMN rehearsal TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE steps ADD COLUMN peak_gpu_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE reverts (
        run TEXT NOT NULL REFERENCES runs(id),
        idx INTEGER NOT NULL,
        created TEXT NOT NULL,
        to_step INTEGER NOT NULL,
        weights_hash TEXT NOT NULL,
        steps TEXT NOT NULL,
        probes TEXT NOT NULL,
        PRIMARY KEY (run, idx)
    );
    "#,
    // 6: where a run's merges make ΔW = B·A: 1 on the weights' device (runs since session 6), 0 on the
    // host (every run before). Replay repeats a run's own arithmetic: a GPU's product differs from
    // the host's in the last bits, and so would the weights hash.
    r#"
    ALTER TABLE runs ADD COLUMN merge_on_device INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: the general check beside locality (issue #12): the perplexity of the base model's own
    // answers to the locality prompts at the weights of the step (step -1: the base model). NULL in
    // rows recorded before it.
    r#"
    ALTER TABLE locality ADD COLUMN perplexity REAL;
    "#,
    // 8: how a repair's consolidation step trained (its epochs, schedule and mini-batch), which the
    // run's config does not say; NULL for every other step.
    r#"
    ALTER TABLE steps ADD COLUMN consolidation TEXT;
    "#,
];
