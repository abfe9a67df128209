//! CSV files: the layout (BOM, delimiter, which column is which), the validating first pass
//! and the re-reading second pass behind [`Plan::rows`](super::Plan::rows).
//!
//! Memory stays bounded however long the file is: the first pass keeps one 128-bit hash of
//! the user key per row (16 bytes; 16 MB for a million rows) and no row. Sorting the hashes
//! shows whether any user repeats; only then does a second look at the file find the lines of
//! the repeats. See [`KeyHasher`] for why a hash collision is not a practical worry.

use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ::csv::{ByteRecord, ReaderBuilder};
use anyhow::{anyhow, bail};

use super::{
    is_utf16_bom, parse_text, parse_user, plural, text_problem, thousands, unreadable, InputKind,
    IntakeError, IntakeRow, Origin, Plan, RowError, RowErrors, MAX_DUPLICATES, SAMPLE_SIZE,
    UTF8_BOM,
};

/// Accepted names of the user column, in priority order (compared case-insensitively).
pub const USER_COLUMNS: [&str; 5] = ["user", "userPrincipalName", "upn", "id", "objectId"];

/// How much of the file start is read to find the header line's delimiter.
const HEADER_PREFIX_BYTES: u64 = 64 * 1024;

/// What a plan needs to re-read a CSV file: where it is, how it is laid out, how it looked
/// when validated, and which lines to skip as duplicates.
#[derive(Debug)]
pub(super) struct CsvOrigin {
    path: PathBuf,
    name: String,
    layout: Layout,
    stamp: Stamp,
    /// Every duplicate line, ascending.
    duplicate_lines: Vec<u64>,
}

/// How the file is laid out, as found by the first pass.
#[derive(Debug, Clone)]
struct Layout {
    /// Bytes of UTF-8 byte order mark to skip (0 or 3).
    skip: u64,
    delimiter: u8,
    /// Header names as written (trimmed), for messages.
    headers: Vec<String>,
    user: usize,
    ticket: Option<usize>,
    reason: Option<usize>,
}

/// Size and modification time: if either differs at re-read, the file changed.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// A 128-bit hash of a user key: two SipHash-1-3 hashes (std's `RandomState`), each keyed at
/// random per plan. A collision would make a user be skipped as a "duplicate"; among a
/// million keys its chance is about 2^-88, and random keys mean no input can aim for one.
/// (Fast, too, in an unoptimised test build, where SHA-256's generic wrappers cost µs a key.)
struct KeyHasher([RandomState; 2]);

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher([RandomState::new(), RandomState::new()])
    }

    fn hash(&self, key: &str) -> u128 {
        u128::from(self.0[0].hash_one(key)) << 64 | u128::from(self.0[1].hash_one(key))
    }
}

/// Records of the file, blank ones skipped, with the line each starts on.
struct Records {
    reader: ::csv::Reader<CrlfAsLf<BufReader<File>>>,
    record: ByteRecord,
}

impl Records {
    fn open(path: &Path, layout: &Layout) -> std::io::Result<Records> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(layout.skip))?;
        Ok(Records::new(file, layout.delimiter))
    }

    fn new(file: File, delimiter: u8) -> Records {
        let reader = ReaderBuilder::new()
            .has_headers(false)
            // Rows with more or fewer fields than the header are fine if the user cell exists.
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(CrlfAsLf::new(BufReader::new(file)));
        Records {
            reader,
            record: ByteRecord::new(),
        }
    }

    /// The next record that is not blank (all cells empty or whitespace), and its line.
    fn next(&mut self) -> Result<Option<u64>, ::csv::Error> {
        while self.reader.read_byte_record(&mut self.record)? {
            if self
                .record
                .iter()
                .all(|cell| cell.iter().all(u8::is_ascii_whitespace))
            {
                continue;
            }
            let line = self.record.position().map_or(0, |p| p.line());
            return Ok(Some(line));
        }
        Ok(None)
    }

    /// Why the current record is not UTF-8 text, or `None`.
    fn text_problem(&self, name: &str, line: u64, headers: &[String]) -> Option<String> {
        // Fast path: a whole record that is UTF-8 without NUL needs no per-cell look. (Cells
        // split only at ASCII bytes, so a UTF-8 record has UTF-8 cells.)
        let all = self.record.as_slice();
        if !all.contains(&0) && std::str::from_utf8(all).is_ok() {
            return None;
        }
        self.record.iter().enumerate().find_map(|(i, cell)| {
            let where_ = match headers.get(i) {
                Some(header) => format!(", column {header:?},"),
                None => format!(", field {},", i + 1),
            };
            text_problem(name, line, &where_, cell)
        })
    }
}

/// Reads `\r\n` as `\n`; a lone `\r` is kept.
///
/// The csv crate counts lines by `\n` but ends a record at the `\r` of `\r\n`, so the `\n`
/// is counted as part of the next record and every record of a CRLF file after the first is
/// reported one line too early. With `\n` alone its line numbers are right. (Line breaks
/// inside quoted cells become `\n` too, which no cell we read cares about.)
struct CrlfAsLf<R> {
    inner: R,
    /// A `\r` ended the last buffer: whether it pairs with a `\n` shows on the next read.
    held_cr: bool,
}

impl<R: BufRead> CrlfAsLf<R> {
    fn new(inner: R) -> Self {
        CrlfAsLf {
            inner,
            held_cr: false,
        }
    }
}

impl<R: BufRead> Read for CrlfAsLf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            if self.held_cr {
                self.held_cr = false;
                if input.first() != Some(&b'\n') {
                    out[0] = b'\r';
                    return Ok(1);
                }
                // Otherwise the pair becomes the `\n` copied below.
            }
            if input.is_empty() {
                return Ok(0);
            }
            let take = input.len().min(out.len());
            let (copied, consumed) = match input[..take].iter().position(|&b| b == b'\r') {
                None => (take, take),
                Some(at) if at + 1 == input.len() => {
                    self.held_cr = true;
                    (at, at + 1)
                }
                // Drop the `\r`; its `\n` is copied on the next read.
                Some(at) if input[at + 1] == b'\n' => (at, at + 1),
                Some(at) => (at + 1, at + 1),
            };
            out[..copied].copy_from_slice(&input[..copied]);
            self.inner.consume(consumed);
            // Returning 0 would mean the end of the file: read on if only a `\r` was dropped.
            if copied > 0 {
                return Ok(copied);
            }
        }
    }
}

impl Layout {
    /// The row on the current record, or what is wrong with it.
    fn row(&self, record: &ByteRecord, line: u64) -> Result<IntakeRow, RowError> {
        let header = &self.headers[self.user];
        // Cells were checked to be UTF-8 before; a cell that is not reads as empty text here
        // and is then refused as text would be.
        let cell = |i: usize| record.get(i).map(|c| std::str::from_utf8(c).unwrap_or(""));
        let Some(raw) = cell(self.user) else {
            return Err(RowError {
                line,
                field: header.clone(),
                value: String::new(),
                reason: format!(
                    "has {} {} but the user column {header:?} is field {}: add the missing \
                     fields or delete the row",
                    record.len(),
                    plural(record.len() as u64, "field", "fields"),
                    self.user + 1
                ),
            });
        };
        let user = parse_user(line, header, raw)?;
        let ticket = match self.ticket {
            Some(i) => parse_text(line, &self.headers[i], cell(i))?,
            None => None,
        };
        let reason = match self.reason {
            Some(i) => parse_text(line, &self.headers[i], cell(i))?,
            None => None,
        };
        Ok(IntakeRow {
            line,
            user,
            ticket,
            reason,
            requested_by: None,
            revoke_sessions: None,
            tap: None,
        })
    }
}

/// `,` or `;`, whichever occurs more often outside quotes on the first line (`,` on a tie,
/// e.g. a single-column file).
fn detect_delimiter(start: &[u8]) -> u8 {
    let (mut commas, mut semicolons, mut quoted) = (0usize, 0usize, false);
    for &byte in start {
        match byte {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => break,
            b',' if !quoted => commas += 1,
            b';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if semicolons > commas {
        b';'
    } else {
        b','
    }
}

/// The user, ticket and reason columns among `headers`.
fn find_columns(
    name: &str,
    headers: &[String],
) -> Result<(usize, Option<usize>, Option<usize>), IntakeError> {
    let position = |wanted: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(wanted));
    let Some(user) = USER_COLUMNS.iter().find_map(|wanted| position(wanted)) else {
        let found = headers
            .iter()
            .map(|h| format!("{:?}", super::shorten(h)))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(IntakeError::File(format!(
            "{name} has no user column: the header has {found}; name the column that \
             holds the users one of {} (any case)",
            USER_COLUMNS.join(", ")
        )));
    };
    Ok((user, position("ticket"), position("reason")))
}

pub(super) fn plan(path: &Path) -> Result<Plan, IntakeError> {
    let name = path.display().to_string();
    let metadata = fs::metadata(path).map_err(|e| unreadable(&name, &e))?;
    if metadata.is_dir() {
        return Err(IntakeError::File(format!(
            "{name} is a directory: give the path of the CSV file"
        )));
    }
    if metadata.len() == 0 {
        return Err(IntakeError::File(format!(
            "{name} is empty (0 bytes): it needs a header line naming the user column and one \
             user per line; export the users again"
        )));
    }
    let stamp = Stamp::of(&metadata);
    let mut file = File::open(path).map_err(|e| unreadable(&name, &e))?;

    let mut start = Vec::new();
    (&mut file)
        .take(HEADER_PREFIX_BYTES)
        .read_to_end(&mut start)
        .map_err(|e| unreadable(&name, &e))?;
    if is_utf16_bom(&start) {
        return Err(IntakeError::File(format!(
            "{name} is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8 (in \
             Excel: Save As, \"CSV UTF-8\") and try again"
        )));
    }
    let skip = if start.starts_with(UTF8_BOM) { 3 } else { 0 };
    let delimiter = detect_delimiter(&start[skip..]);
    file.seek(SeekFrom::Start(skip as u64))
        .map_err(|e| unreadable(&name, &e))?;
    let mut records = Records::new(file, delimiter);
    let read_error = |e: ::csv::Error| IntakeError::File(format!("cannot read {name}: {e}"));

    let Some(header_line) = records.next().map_err(read_error)? else {
        return Err(IntakeError::File(format!(
            "{name} has only blank lines: it needs a header line naming the user column and \
             one user per line"
        )));
    };
    if let Some(problem) = records.text_problem(&name, header_line, &[]) {
        return Err(IntakeError::File(problem));
    }
    let headers: Vec<String> = records
        .record
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let (user, ticket, reason) = find_columns(&name, &headers)?;
    let layout = Layout {
        skip: skip as u64,
        delimiter,
        headers,
        user,
        ticket,
        reason,
    };

    let hasher = KeyHasher::new();
    let mut errors = RowErrors::default();
    let mut hashes: Vec<u128> = Vec::new();
    let mut sample: Vec<(String, String)> = Vec::new();
    while let Some(line) = records.next().map_err(read_error)? {
        if let Some(problem) = records.text_problem(&name, line, &layout.headers) {
            return Err(IntakeError::File(problem));
        }
        match layout.row(&records.record, line) {
            Ok(row) => {
                let key = row.user.key();
                hashes.push(hasher.hash(&key));
                if sample.len() < SAMPLE_SIZE && sample.iter().all(|(k, _)| *k != key) {
                    sample.push((key, row.user.to_string()));
                }
            }
            Err(error) => errors.push(error),
        }
    }
    let data_rows = hashes.len() as u64 + errors.total;
    errors.into_result(InputKind::Csv)?;
    if data_rows == 0 {
        return Err(IntakeError::File(format!(
            "{name} has a header but no data rows: add one user per line under the header \
             (line {header_line})"
        )));
    }

    let rows = hashes.len() as u64;
    hashes.sort_unstable();
    let mut repeated: Vec<u128> = hashes
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(hashes);
    repeated.dedup();

    let mut origin = CsvOrigin {
        path: path.to_path_buf(),
        name: name.clone(),
        layout,
        stamp,
        duplicate_lines: Vec::new(),
    };
    let duplicates = if repeated.is_empty() {
        Vec::new()
    } else {
        origin
            .find_duplicates(&hasher, &repeated)
            .map_err(|e| IntakeError::File(format!("cannot read {name} again: {e:#}")))?
    };
    Ok(Plan {
        source: format!("csv:{name}"),
        count: rows - origin.duplicate_lines.len() as u64,
        duplicates_total: origin.duplicate_lines.len() as u64,
        duplicates,
        sample: sample.into_iter().map(|(_, user)| user).collect(),
        origin: Origin::Csv(origin),
    })
}

impl CsvOrigin {
    /// The lines of users whose key hashes are in `repeated` (sorted): the first line of
    /// each stays, later ones go into `duplicate_lines`; the first [`MAX_DUPLICATES`] are
    /// returned as (line, first line, user). The first pass kept only hashes, so this reads
    /// the file again; it runs only when some user repeats.
    fn find_duplicates(
        &mut self,
        hasher: &KeyHasher,
        repeated: &[u128],
    ) -> anyhow::Result<Vec<(u64, u64, String)>> {
        // first_lines[i] is where the user hashed to repeated[i] first appeared (0: not yet).
        let mut first_lines = vec![0u64; repeated.len()];
        let mut named = Vec::new();
        let mut records = Records::open(&self.path, &self.layout)?;
        records.next()?; // the header
        while let Some(line) = records.next()? {
            let row = self
                .layout
                .row(&records.record, line)
                .map_err(|e| anyhow!("line {line} changed: {}", e.reason))?;
            let hash = hasher.hash(&row.user.key());
            let Ok(at) = repeated.binary_search(&hash) else {
                continue;
            };
            match first_lines[at] {
                0 => first_lines[at] = line,
                first => {
                    self.duplicate_lines.push(line);
                    if named.len() < MAX_DUPLICATES {
                        named.push((line, first, row.user.to_string()));
                    }
                }
            }
        }
        Ok(named)
    }

    /// The second pass: every valid row again, duplicates skipped.
    pub(super) fn rows(&self, expected: u64) -> anyhow::Result<CsvRows<'_>> {
        self.check_unchanged()?;
        let mut records = Records::open(&self.path, &self.layout)
            .map_err(|e| anyhow!("cannot read {} again: {e}", self.name))?;
        records.next()?; // the header
        Ok(CsvRows {
            origin: self,
            records,
            next_duplicate: 0,
            yielded: 0,
            expected,
            done: false,
        })
    }

    fn check_unchanged(&self) -> anyhow::Result<()> {
        let now = fs::metadata(&self.path)
            .map_err(|e| anyhow!("cannot read {} again: {e}", self.name))?;
        if Stamp::of(&now) != self.stamp {
            bail!(self.changed("its size or modification time differ"));
        }
        Ok(())
    }

    fn changed(&self, what: &str) -> String {
        format!(
            "{} changed since it was checked ({what}): stopped reading it; run enqueue again \
             on the final file",
            self.name
        )
    }
}

/// Iterator behind [`Plan::rows`](super::Plan::rows) for a CSV file.
pub(super) struct CsvRows<'a> {
    origin: &'a CsvOrigin,
    records: Records,
    /// Index into `origin.duplicate_lines` of the next duplicate to skip.
    next_duplicate: usize,
    yielded: u64,
    expected: u64,
    done: bool,
}

impl CsvRows<'_> {
    fn step(&mut self) -> anyhow::Result<Option<IntakeRow>> {
        let origin = self.origin;
        loop {
            let Some(line) = self.records.next()? else {
                origin.check_unchanged()?;
                if self.yielded != self.expected {
                    bail!(origin.changed(&format!(
                        "it now has {} users to enqueue, not {}",
                        thousands(self.yielded),
                        thousands(self.expected)
                    )));
                }
                return Ok(None);
            };
            if origin.duplicate_lines.get(self.next_duplicate) == Some(&line) {
                self.next_duplicate += 1;
                continue;
            }
            if let Some(problem) =
                self.records
                    .text_problem(&origin.name, line, &origin.layout.headers)
            {
                bail!(origin.changed(&problem));
            }
            let row = origin.layout.row(&self.records.record, line).map_err(|e| {
                anyhow!(origin.changed(&format!("line {line} no longer valid: {}", e.reason)))
            })?;
            self.yielded += 1;
            if self.yielded > self.expected {
                bail!(origin.changed("it has more rows than were checked"));
            }
            return Ok(Some(row));
        }
    }
}

impl Iterator for CsvRows<'_> {
    type Item = anyhow::Result<IntakeRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
#[path = "csv_tests.rs"]
mod tests;
