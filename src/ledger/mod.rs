//! The SQLite ledger (WAL, so several processes can share it): runs, facts, steps, deltas, probes,
//! generations and locality. Reports and `compare` read it alone.
mod lock;
mod records;
mod schema;

use crate::error::{Error, Result};
use crate::knowledge::Fact;
pub use lock::RunLock;
pub use records::*;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    pub path: PathBuf,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("ledger values serialise")
}

fn parse<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

/// The runs table's columns of every schema version (what makes a file ours); selects add the later
/// `merge_on_device` (schema 6), which a migration adds to older files.
const RUN_COLS: &str = "id, key, created, strategy, config, model_path, model_hash, knowledge_dir, \
    knowledge_hash, seed, status, base_weights_hash, weights_hash, finished";

fn run_row(r: &Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        key: r.get(1)?,
        created: r.get(2)?,
        strategy: r.get(3)?,
        config: r.get(4)?,
        model_path: r.get(5)?,
        model_hash: r.get(6)?,
        knowledge_dir: r.get(7)?,
        knowledge_hash: r.get(8)?,
        seed: r.get(9)?,
        status: r.get(10)?,
        base_weights_hash: r.get(11)?,
        weights_hash: r.get(12)?,
        finished: r.get(13)?,
        merge_on_device: r.get(14)?,
    })
}

fn step_row(r: &Row) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        run: r.get(0)?,
        idx: r.get(1)?,
        facts: parse(r.get(2)?)?,
        rehearsed: parse(r.get(3)?)?,
        optimizer_steps: r.get(4)?,
        // JSON has no NaN: serde writes null, which an earlier release could store for a diverged
        // step. Such a value reads back as NaN rather than making the whole ledger unreadable.
        losses: parse::<Vec<Option<f64>>>(r.get(5)?)?
            .into_iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect(),
        seconds: r.get(6)?,
        eval_seconds: r.get(7)?,
        tokens: r.get(8)?,
        peak_rss_bytes: r.get(9)?,
        delta_file: r.get(10)?,
        rank_pattern: parse(r.get(11)?)?,
        weights_hash: r.get(12)?,
        created: r.get(13)?,
        phases: parse(r.get(14)?)?,
        rehearsal: parse(r.get(15)?)?,
        peak_gpu_bytes: r.get(16)?,
        consolidation: r.get::<_, Option<String>>(17)?.map(parse).transpose()?,
    })
}

/// Checks, reading only, that `conn` holds an injector ledger this release can use, and returns its
/// schema version: one no newer than this release's, whose `runs` table has injector's columns; an
/// empty database (version 0, no tables) passes only when `creating`.
///
/// Errors: bad input naming the file — not an SQLite database, a database of something else, a
/// newer schema, damaged pages — with the file left as it was.
fn check_ours(conn: &Connection, path: &Path, creating: bool) -> Result<usize> {
    let not_ours = |why: &str| {
        Error::BadInput(format!(
            "{}: not an injector ledger ({why}); left untouched",
            path.display()
        ))
    };
    let damaged = |why: &str| {
        Error::BadInput(format!(
            "{}: the ledger is damaged ({}); left untouched",
            path.display(),
            why.lines().last().unwrap_or(why).trim()
        ))
    };
    // SQLite's own word for a damaged file (a truncated one, pages overwritten), else not ours.
    let unreadable = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => damaged(&e.to_string()),
        _ => not_ours(&e.to_string()),
    };
    // One read transaction, so that the version and the tables are of the same moment (another
    // process may be making the ledger now).
    let tx = conn.unchecked_transaction().map_err(unreadable)?;
    let version: usize = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(unreadable)?;
    let current = schema::MIGRATIONS.len();
    if version > current {
        return Err(Error::BadInput(format!(
            "{}: ledger schema version {version} is newer than this injector's ({current}); left untouched",
            path.display()
        )));
    }
    let tables = names(&tx, "SELECT name FROM sqlite_master WHERE type = 'table'").map_err(unreadable)?;
    if version == 0 {
        return match (tables.is_empty(), creating) {
            (true, true) => Ok(0),
            (true, false) => Err(not_ours("an empty database")),
            (false, _) => Err(not_ours("its tables are not injector's")),
        };
    }
    let columns = names(&tx, "SELECT name FROM pragma_table_info('runs')").map_err(unreadable)?;
    if columns.is_empty() {
        return Err(not_ours("no runs table"));
    }
    if RUN_COLS
        .split(", ")
        .any(|c| !columns.iter().any(|have| have == c.trim()))
    {
        return Err(not_ours("its runs table is not injector's"));
    }
    // Damaged pages would otherwise surface mid-command, after a writing one has changed the file
    // (a run trained, then failed to commit): every page is read once here (0.3 s for 160 MB).
    let check: String = tx
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(unreadable)?;
    if check != "ok" {
        return Err(damaged(&check));
    }
    Ok(version)
}

/// A read-only connection to the file at `path`.
///
/// Errors: bad input naming the file when SQLite cannot open it.
fn connect_read_only(path: &Path) -> Result<Connection> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::BadInput(format!("{}: cannot open ledger: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    Ok(conn)
}

/// The first column of every row of `sql`, as text.
fn names(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([], |r| r.get(0))?.collect();
    rows
}

impl Ledger {
    /// Opens (creating if needed) and migrates the ledger, for commands that write. A file that is
    /// not an injector ledger, or one of a newer schema, is refused before anything is written to
    /// it (see [`check_ours`]).
    ///
    /// Errors: bad input naming the file when it cannot be opened or is not ours; SQLite's errors.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::BadInput(format!("{}: cannot create the ledger's folder: {e}", path.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::BadInput(format!("{}: cannot open ledger: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        check_ours(&conn, path, true)?;
        // Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once rather
        // than waiting when another process is switching it too: try again for a while.
        let mut tries = 0;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 300 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(Error::BadInput(format!(
                        "{}: cannot write the ledger: {e}",
                        path.display()
                    )));
                }
            }
        }
        let mut l = Ledger::new(conn, path)?;
        l.migrate()?;
        Ok(l)
    }

    /// Opens a ledger that must already exist, for commands that only read (`ledger`, `report`,
    /// `query --run`, `probe --run`, a resume's look-up): the file is opened read-only, so nothing
    /// in it changes — no tables, no journal mode. A ledger of an older schema is read through a
    /// copy in memory migrated to this one.
    ///
    /// Errors: bad input naming the file when it is missing or not an injector ledger (see
    /// [`check_ours`]); SQLite's errors.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::BadInput(format!(
                "{}: no such ledger (see --ledger)",
                path.display()
            )));
        }
        let conn = connect_read_only(path)?;
        let version = check_ours(&conn, path, false)?;
        if version == schema::MIGRATIONS.len() {
            return Ledger::new(conn, path);
        }
        let mut copy = Connection::open_in_memory()?;
        rusqlite::backup::Backup::new(&conn, &mut copy)?.run_to_completion(1024, std::time::Duration::ZERO, None)?;
        let mut l = Ledger::new(copy, path)?;
        l.migrate()?;
        Ok(l)
    }

    /// Checks, writing nothing, that `path` is an injector ledger this release can write to, or no file
    /// yet (a new ledger): for commands that write, before they load a model.
    ///
    /// Errors: as [`Ledger::open_read_only`], for a file that is there.
    pub fn check(path: &Path) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        // Read-write (the command will write), though nothing is written: the last connection to
        // a WAL ledger that closes removes the `-wal` and `-shm` files its opening made, which a
        // read-only one leaves behind beside a ledger the command then refuses to touch.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| Error::BadInput(format!("{}: cannot open ledger: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        check_ours(&conn, path, true).map(|_| ())
    }

    fn new(conn: Connection, path: &Path) -> Result<Self> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// A transaction that takes the write lock at its start. A deferred one that reads first
    /// (the next step index, the next fact order) and writes later fails at once with "database is
    /// locked" when another process (`compare --jobs`) committed in between: SQLite cannot upgrade
    /// a read snapshot that is no longer the latest, and waiting would not help.
    fn write_transaction(&mut self) -> Result<rusqlite::Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    /// Applies the migrations the ledger lacks ([`check_ours`] has refused newer schemas).
    fn migrate(&mut self) -> Result<()> {
        let version: usize = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version) {
            // Several processes may open a new ledger at once (`compare --jobs`): take the write
            // lock first, then look again whether another one has migrated meanwhile.
            let tx = self.write_transaction()?;
            let now: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if now <= i {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i + 1)?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Where the step factors live: `injector.db` -> `injector.deltas/`.
    pub fn deltas_dir(&self) -> PathBuf {
        self.path.with_extension("deltas")
    }

    pub fn find_run_by_key(&self, key: &str) -> Result<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLS}, merge_on_device FROM runs WHERE key = ?1");
        Ok(self.conn.query_row(&sql, [key], run_row).optional()?)
    }

    /// A run by id (or unique id prefix).
    pub fn run(&self, id: &str) -> Result<RunRow> {
        let sql = format!("SELECT {RUN_COLS}, merge_on_device FROM runs WHERE id = ?1 OR id LIKE ?2 ORDER BY id");
        let mut st = self.conn.prepare(&sql)?;
        let rows: Vec<RunRow> = st
            .query_map(params![id, format!("{id}%")], run_row)?
            .collect::<rusqlite::Result<_>>()?;
        match rows.len() {
            0 => Err(Error::BadInput(format!(
                "{}: no run '{id}' (see `injector ledger list`)",
                self.path.display()
            ))),
            1 => Ok(rows.into_iter().next().expect("one row")),
            _ => rows
                .iter()
                .find(|r| r.id == id)
                .cloned()
                .ok_or_else(|| Error::BadInput(format!("run id '{id}' is ambiguous: {} runs match", rows.len()))),
        }
    }

    pub fn list_runs(&self) -> Result<Vec<RunRow>> {
        let sql = format!("SELECT {RUN_COLS}, merge_on_device FROM runs ORDER BY created, id");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], run_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Creates a run with its locality baseline, in one transaction; the ledger stamps `created` (UTC).
    pub fn create_run(&mut self, run: &RunRow, base: &[LocalityBase]) -> Result<()> {
        let tx = self.write_transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLS}, merge_on_device) VALUES (?1,?2,strftime('%Y-%m-%dT%H:%M:%SZ','now'),?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)"
            ),
            params![
                run.id,
                run.key,
                run.strategy,
                run.config,
                run.model_path,
                run.model_hash,
                run.knowledge_dir,
                run.knowledge_hash,
                run.seed,
                run.status,
                run.base_weights_hash,
                run.weights_hash,
                run.finished,
                run.merge_on_device
            ],
        )?;
        for (i, b) in base.iter().enumerate() {
            tx.execute(
                "INSERT INTO locality_base (run, idx, prompt, prompt_ids, answer_ids, answer) VALUES (?1,?2,?3,?4,?5,?6)",
                params![run.id, i as i64, b.prompt, json(&b.prompt_ids), json(&b.answer_ids), b.answer],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the facts of a run (in knowledge order); facts already there are kept.
    pub fn add_facts(&mut self, run: &str, facts: &[Fact]) -> Result<()> {
        let tx = self.write_transaction()?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(ord) + 1, 0) FROM run_facts WHERE run = ?1",
            [run],
            |r| r.get(0),
        )?;
        let mut ord = next;
        for f in facts {
            tx.execute(
                "INSERT OR IGNORE INTO facts (hash, id, op, subject, answer, source, body) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![f.hash, f.id, f.op.as_str(), f.subject, f.answer, f.source, json(f)],
            )?;
            let added = tx.execute(
                "INSERT OR IGNORE INTO run_facts (run, ord, fact) VALUES (?1,?2,?3)",
                params![run, ord, f.hash],
            )?;
            ord += added as i64;
        }
        tx.commit()?;
        Ok(())
    }

    /// The facts of a run in the order they were added.
    pub fn run_facts(&self, run: &str) -> Result<Vec<Fact>> {
        let mut st = self.conn.prepare(
            "SELECT f.body FROM run_facts rf JOIN facts f ON f.hash = rf.fact WHERE rf.run = ?1 ORDER BY rf.ord",
        )?;
        let rows = st
            .query_map([run], |r| parse(r.get(0)?))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn locality_base(&self, run: &str) -> Result<Vec<LocalityBase>> {
        let mut st = self
            .conn
            .prepare("SELECT prompt, prompt_ids, answer_ids, answer FROM locality_base WHERE run = ?1 ORDER BY idx")?;
        let rows = st
            .query_map([run], |r| {
                Ok(LocalityBase {
                    prompt: r.get(0)?,
                    prompt_ids: parse(r.get(1)?)?,
                    answer_ids: parse(r.get(2)?)?,
                    answer: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn steps(&self, run: &str) -> Result<Vec<StepRow>> {
        let mut st = self.conn.prepare(
            "SELECT run, idx, facts, rehearsed, optimizer_steps, losses, seconds, eval_seconds, tokens, \
             peak_rss_bytes, delta_file, rank_pattern, weights_hash, created, phases, rehearsal, peak_gpu_bytes, \
             consolidation FROM steps WHERE run = ?1 \
             ORDER BY idx",
        )?;
        let rows = st.query_map([run], step_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Commits a step and everything measured after it in one transaction. Fails if the step index
    /// is not the next one, so no step is ever applied twice.
    pub fn commit_step(&mut self, rec: &StepRecord) -> Result<()> {
        let s = &rec.step;
        let tx = self.write_transaction()?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM steps WHERE run = ?1",
            [&s.run],
            |r| r.get(0),
        )?;
        if next != s.idx {
            return Err(Error::Ledger(format!(
                "run {} expects step {next}, not {}",
                s.run, s.idx
            )));
        }
        tx.execute(
            "INSERT INTO steps (run, idx, facts, rehearsed, optimizer_steps, losses, seconds, eval_seconds, tokens, \
             peak_rss_bytes, delta_file, rank_pattern, weights_hash, phases, rehearsal, peak_gpu_bytes, consolidation, \
             created) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17, \
             strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
            params![
                s.run,
                s.idx,
                json(&s.facts),
                json(&s.rehearsed),
                s.optimizer_steps,
                json(&s.losses),
                s.seconds,
                s.eval_seconds,
                s.tokens,
                s.peak_rss_bytes,
                s.delta_file,
                json(&s.rank_pattern),
                s.weights_hash,
                json(&s.phases),
                json(&s.rehearsal),
                s.peak_gpu_bytes,
                s.consolidation.as_ref().map(json)
            ],
        )?;
        for (module, rank) in &s.rank_pattern {
            tx.execute(
                "INSERT INTO deltas (run, step, module, rank, file) VALUES (?1,?2,?3,?4,?5)",
                params![s.run, s.idx, module, rank, s.delta_file],
            )?;
        }
        for p in &rec.probes {
            tx.execute(
                "INSERT INTO probes (run, step, fact, recall, general, previous, detail, free_recall, free_general) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                params![
                    s.run,
                    p.step,
                    p.fact,
                    p.recall,
                    p.general,
                    p.previous,
                    p.detail,
                    p.free_recall,
                    p.free_general
                ],
            )?;
        }
        for g in &rec.generations {
            tx.execute(
                "INSERT OR REPLACE INTO generations (run, step, fact, prompt, text, f1) VALUES (?1,?2,?3,?4,?5,?6)",
                params![s.run, g.step, g.fact, g.prompt, g.text, g.f1],
            )?;
        }
        if let Some(v) = rec.locality {
            tx.execute(
                "INSERT INTO locality (run, step, value, perplexity) VALUES (?1,?2,?3,?4)",
                params![s.run, s.idx, v, rec.perplexity],
            )?;
        }
        tx.execute(
            "UPDATE runs SET weights_hash = ?2 WHERE id = ?1",
            params![s.run, s.weights_hash],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes `run` back to its weights after step `to` (-1: the base), in one transaction: the
    /// later steps, their factors' rows, scores, samples and locality are removed from the run and
    /// kept in a [`RevertRow`]; the run's weights hash becomes the one recorded after `to`, and its
    /// status `reverted` until it trains again. The facts those steps injected are pending again.
    /// Errors: a step the run does not have, or nothing to take back (bad input).
    pub fn revert(&mut self, run: &str, to: i64) -> Result<RevertRow> {
        let r = self.run(run)?;
        let steps = self.steps(&r.id)?;
        self.check_revert(&r, to)?;
        let removed: Vec<StepRow> = steps.iter().filter(|s| s.idx > to).cloned().collect();
        let probes: Vec<ProbeRow> = self.probes(&r.id)?.into_iter().filter(|p| p.step > to).collect();
        let weights_hash = steps
            .iter()
            .find(|s| s.idx == to)
            .map(|s| s.weights_hash.clone())
            .unwrap_or_else(|| r.base_weights_hash.clone());
        let tx = self.write_transaction()?;
        let idx: i64 = tx.query_row("SELECT COUNT(*) FROM reverts WHERE run = ?1", [&r.id], |x| x.get(0))?;
        tx.execute(
            "INSERT INTO reverts (run, idx, created, to_step, weights_hash, steps, probes) \
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%SZ','now'), ?3, ?4, ?5, ?6)",
            params![r.id, idx, to, weights_hash, json(&removed), json(&probes)],
        )?;
        for table in ["steps", "deltas", "probes", "generations", "locality"] {
            let col = if table == "steps" { "idx" } else { "step" };
            tx.execute(
                &format!("DELETE FROM {table} WHERE run = ?1 AND {col} > ?2"),
                params![r.id, to],
            )?;
        }
        tx.execute(
            "UPDATE runs SET weights_hash = ?2, status = 'reverted', finished = NULL WHERE id = ?1",
            params![r.id, weights_hash],
        )?;
        tx.commit()?;
        Ok(self.reverts(&r.id)?.pop().expect("just recorded"))
    }

    /// Whether `run` can be taken back to step `to`: a step it has, before its last (-1: the base).
    /// Errors: bad input naming the range.
    pub fn check_revert(&self, run: &RunRow, to: i64) -> Result<()> {
        let last = self.steps(&run.id)?.last().map(|s| s.idx).unwrap_or(-1);
        if to < -1 || to >= last {
            return Err(Error::BadInput(format!(
                "run {}: --to-step {to}: expected a step from -1 (the base) to {} (its last is {last})",
                run.id,
                last - 1
            )));
        }
        Ok(())
    }

    /// The reverts of `run`, in order.
    pub fn reverts(&self, run: &str) -> Result<Vec<RevertRow>> {
        let mut st = self.conn.prepare(
            "SELECT run, idx, created, to_step, weights_hash, steps, probes FROM reverts WHERE run = ?1 ORDER BY idx",
        )?;
        let rows = st
            .query_map([run], |r| {
                Ok(RevertRow {
                    run: r.get(0)?,
                    idx: r.get(1)?,
                    created: r.get(2)?,
                    to_step: r.get(3)?,
                    weights_hash: r.get(4)?,
                    steps: parse(r.get(5)?)?,
                    probes: parse(r.get(6)?)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Records a comparison of runs (idempotent: the id is derived from the run ids).
    pub fn add_comparison(&self, id: &str, runs: &[String]) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO comparisons (id, created, runs) VALUES (?1, strftime('%Y-%m-%dT%H:%M:%SZ','now'), ?2)",
            params![id, json(&runs)],
        )?;
        Ok(())
    }

    /// The runs of a comparison.
    pub fn comparison(&self, id: &str) -> Result<Vec<String>> {
        let runs: Option<String> = self
            .conn
            .query_row("SELECT runs FROM comparisons WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        let runs = runs.ok_or_else(|| Error::BadInput(format!("{}: no comparison '{id}'", self.path.display())))?;
        serde_json::from_str(&runs).map_err(|e| Error::Ledger(e.to_string()))
    }

    pub fn comparisons(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, runs FROM comparisons ORDER BY created, id")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, parse(r.get(1)?)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Records the locality of the base model (step -1) and other run-level measurements, with the
    /// perplexity of the general check where it was measured.
    pub fn set_locality(&self, run: &str, step: i64, value: f64, perplexity: Option<f64>) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO locality (run, step, value, perplexity) VALUES (?1,?2,?3,?4)",
            params![run, step, value, perplexity],
        )?;
        Ok(())
    }

    pub fn set_status(&self, run: &str, status: &str) -> Result<()> {
        let finished = if status == "running" { None } else { Some(()) };
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished = CASE WHEN ?3 THEN strftime('%Y-%m-%dT%H:%M:%SZ','now') ELSE NULL END WHERE id = ?1",
            params![run, status, finished.is_some()],
        )?;
        Ok(())
    }

    pub fn probes(&self, run: &str) -> Result<Vec<ProbeRow>> {
        let mut st = self.conn.prepare(
            "SELECT step, fact, recall, general, previous, detail, free_recall, free_general FROM probes \
             WHERE run = ?1 ORDER BY step, fact",
        )?;
        let rows = st
            .query_map([run], |r| {
                Ok(ProbeRow {
                    step: r.get(0)?,
                    fact: r.get(1)?,
                    recall: r.get(2)?,
                    general: r.get(3)?,
                    previous: r.get(4)?,
                    detail: r.get(5)?,
                    free_recall: r.get(6)?,
                    free_general: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn generations(&self, run: &str) -> Result<Vec<GenerationRow>> {
        let mut st = self
            .conn
            .prepare("SELECT step, fact, prompt, text, f1 FROM generations WHERE run = ?1 ORDER BY step, fact")?;
        let rows = st
            .query_map([run], |r| {
                Ok(GenerationRow {
                    step: r.get(0)?,
                    fact: r.get(1)?,
                    prompt: r.get(2)?,
                    text: r.get(3)?,
                    f1: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Locality by step (step -1 is the base model, 1.0 by definition).
    pub fn locality(&self, run: &str) -> Result<Vec<(i64, f64)>> {
        let mut st = self
            .conn
            .prepare("SELECT step, value FROM locality WHERE run = ?1 ORDER BY step")?;
        let rows = st
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Records the general check on the base model (step -1) of a run that has none: the row of
    /// step -1 is the run's from its creation (locality 1.0).
    pub fn set_base_perplexity(&self, run: &str, perplexity: f64) -> Result<()> {
        self.conn.execute(
            "UPDATE locality SET perplexity = ?2 WHERE run = ?1 AND step = -1 AND perplexity IS NULL",
            params![run, perplexity],
        )?;
        Ok(())
    }

    /// The general check by step: the perplexity of the base model's own answers to the locality
    /// prompts (step -1: on the base model itself), where it was measured (rows recorded before
    /// schema 7 have none).
    pub fn perplexity(&self, run: &str) -> Result<Vec<(i64, f64)>> {
        let mut st = self
            .conn
            .prepare("SELECT step, perplexity FROM locality WHERE run = ?1 AND perplexity IS NOT NULL ORDER BY step")?;
        let rows = st
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Records one invocation of a run (its index is the next free one).
    pub fn add_invocation(&mut self, inv: &InvocationRow) -> Result<()> {
        let tx = self.write_transaction()?;
        let idx: i64 = tx.query_row(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM invocations WHERE run = ?1",
            [&inv.run],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO invocations (run, idx, started, finished, steps, seconds, phases) \
             VALUES (?1,?2,?3,strftime('%Y-%m-%dT%H:%M:%SZ','now'),?4,?5,?6)",
            params![
                inv.run,
                idx,
                inv.started,
                inv.steps,
                inv.seconds,
                json(&serde_json::json!({"fixed": inv.fixed, "steps": inv.step_phases}))
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The invocations of a run, oldest first.
    pub fn invocations(&self, run: &str) -> Result<Vec<InvocationRow>> {
        let mut st = self.conn.prepare(
            "SELECT run, idx, started, finished, steps, seconds, phases FROM invocations WHERE run = ?1 ORDER BY idx",
        )?;
        let rows = st
            .query_map([run], |r| {
                let phases: serde_json::Value = parse(r.get(6)?)?;
                fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> rusqlite::Result<T> {
                    serde_json::from_value(v[k].clone()).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
                    })
                }
                Ok(InvocationRow {
                    run: r.get(0)?,
                    idx: r.get(1)?,
                    started: r.get(2)?,
                    finished: r.get(3)?,
                    steps: r.get(4)?,
                    seconds: r.get(5)?,
                    fixed: field(&phases, "fixed")?,
                    step_phases: field(&phases, "steps")?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The base model's answers to a prompt set, if a run has kept them: per prompt, (prompt ids,
    /// answer ids). Keyed by the model's source hash, its weight type on the device (`kind`: answers in
    /// bf16 and fp32 can differ), the prompt set's hash and the answers' token limit.
    pub fn base_answers(
        &self,
        model_hash: &str,
        kind: &str,
        prompts: &str,
        tokens: usize,
    ) -> Result<Option<Vec<BaseAnswer>>> {
        let row: Option<String> = self
            .conn
            .query_row(
                "SELECT answers FROM base_answers WHERE model_hash = ?1 AND kind = ?2 AND prompts = ?3 AND tokens = ?4",
                params![model_hash, kind, prompts, tokens as i64],
                |r| r.get(0),
            )
            .optional()?;
        // A row that does not parse is as good as none: the answers are decoded again.
        Ok(row.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Keeps the base model's answers to a prompt set (see [`Ledger::base_answers`]).
    pub fn keep_base_answers(
        &mut self,
        model_hash: &str,
        kind: &str,
        prompts: &str,
        tokens: usize,
        answers: &[BaseAnswer],
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO base_answers (model_hash, kind, prompts, tokens, answers) VALUES (?1,?2,?3,?4,?5)",
            params![model_hash, kind, prompts, tokens as i64, json(&answers)],
        )?;
        Ok(())
    }

    /// The current UTC time as the ledger stamps it (`YYYY-MM-DDTHH:MM:SSZ`).
    pub fn now(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("SELECT strftime('%Y-%m-%dT%H:%M:%SZ','now')", [], |r| r.get(0))?)
    }

    /// The run's locality after its latest step that measured it (None before any).
    pub fn last_locality(&self, run: &str) -> Result<Option<f64>> {
        Ok(last_locality(&self.locality(run)?))
    }
}

/// The base model's answer to one prompt: (prompt ids, answer ids).
pub type BaseAnswer = (Vec<i64>, Vec<i64>);

/// The latest locality after a step among `(step, value)` rows in step order (the row of step -1,
/// the base model's 1.0, does not count).
pub fn last_locality(rows: &[(i64, f64)]) -> Option<f64> {
    rows.iter().rev().find(|(s, _)| *s >= 0).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several processes (here: connections on threads) creating the same new ledger at once: each
    /// opens it, and the schema is migrated exactly once.
    #[test]
    fn concurrent_creation_migrates_once() {
        for round in 0..5 {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("l.db");
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let p = p.clone();
                    std::thread::spawn(move || Ledger::open(&p).map(|l| l.schema_version().unwrap()))
                })
                .collect();
            for h in handles {
                let v = h.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(v, schema::MIGRATIONS.len() as i64);
            }
        }
    }

    #[test]
    fn migrates_once_and_refuses_newer_schemas() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.db");
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
        drop(l);
        let l = Ledger::open(&p).unwrap();
        l.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(l);
        let e = Ledger::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer than this injector"), "{e}");
    }
}
