//! The full-screen view of `pyusdt top` (ratatui): the busiest functions, refreshed per
//! interval; keys to sort, filter by process, pause and quit.
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row as TableRow, Table, TableState};

use super::top::{cut_left, Row, View};
use crate::attach::Tracer;
use crate::cli::TopSort;
use crate::text::{count, duration};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Own,
    Total,
    Calls,
    Pid,
    Function,
    File,
}

impl Sort {
    /// The next order (`s`); own and total time only when calls are timed.
    fn next(self, timed: bool) -> Sort {
        match self {
            Sort::Own => Sort::Total,
            Sort::Total => Sort::Calls,
            Sort::Calls => Sort::Pid,
            Sort::Pid => Sort::Function,
            Sort::Function => Sort::File,
            Sort::File if timed => Sort::Own,
            Sort::File => Sort::Calls,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Own => "own time",
            Sort::Total => "total time",
            Sort::Calls => "calls",
            Sort::Pid => "pid",
            Sort::Function => "function",
            Sort::File => "file",
        }
    }

    fn apply(self, rows: &mut [Row]) {
        match self {
            Sort::Own => rows.sort_by(|a, b| Row::order(TopSort::Own, a, b)),
            Sort::Total => rows.sort_by(|a, b| Row::order(TopSort::Total, a, b)),
            Sort::Calls => rows.sort_by_key(|r| std::cmp::Reverse(r.calls)),
            Sort::Pid => rows.sort_by(|a, b| a.pid.cmp(&b.pid).then(b.calls.cmp(&a.calls))),
            Sort::Function => rows.sort_by(|a, b| a.function.cmp(&b.function)),
            Sort::File => rows.sort_by(|a, b| a.location.cmp(&b.location)),
        }
    }
}

/// Runs until `q`/Esc or `stop()`. The terminal is restored on every exit path.
pub fn run(
    view: &mut View,
    tracer: &Tracer<'_>,
    interval: Duration,
    stop: &mut dyn FnMut() -> bool,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| {
        let mut rows: Vec<Row> = Vec::new();
        let mut total = 0u64;
        let mut sort = match view.sort {
            TopSort::Own => Sort::Own,
            TopSort::Total => Sort::Total,
            TopSort::Calls => Sort::Calls,
        };
        let timed = view.timed;
        let mut paused = false;
        let mut state = TableState::default().with_selected(Some(0));
        let mut refreshed = Instant::now() - interval;
        let mut elapsed = interval;
        while !stop() {
            if !paused && refreshed.elapsed() >= interval {
                elapsed = refreshed.elapsed();
                (rows, total) = view.rows(tracer, elapsed);
                sort.apply(&mut rows);
                refreshed = Instant::now();
            }
            let sampled = view.sampled(rows.iter().map(|r| r.pid)).len();
            terminal.draw(|frame| {
                let [header, body, footer] = Layout::vertical([
                    Constraint::Length(1),
                    Constraint::Min(3),
                    Constraint::Length(1),
                ])
                .areas(frame.area());
                let filter = view.pid.map_or_else(|| "all processes".into(), |p| format!("PID {p}"));
                frame.render_widget(
                    Line::from(format!(
                        "pyusdt top: {} calls in {:.1} s ({filter}), sorted by {}{}{}",
                        count(total),
                        elapsed.as_secs_f64(),
                        sort.name(),
                        if paused { " — PAUSED" } else { "" },
                        match sampled {
                            0 => String::new(),
                            n => format!(" — {n} sampled (--max-overhead): their CALLS are lower bounds"),
                        }
                    )),
                    header,
                );
                // FILE:LINE gets half of what the fixed columns leave (3/4 without the time
                // columns), and is cut from the left to fit: the file's name and the line stay
                // visible.
                let time_columns: u16 = if timed { 10 + 7 + 10 + 7 } else { 0 };
                let fixed: u16 = 7 + 15 + 11 + 11 + 7 + 6 + 2 + time_columns;
                let left = body.width.saturating_sub(fixed);
                let location_width = if timed { left / 2 } else { left / 4 * 3 }.max(8);
                let time = |ns: Option<u64>| ns.map_or_else(|| "-".into(), duration);
                let percent = |p: Option<f64>| p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
                let table_rows = rows.iter().map(|r| {
                    let mut cells = vec![
                        r.pid.to_string(),
                        r.process.clone(),
                        count(r.calls),
                        format!("{:.1}", r.rate),
                        format!("{:.1}%", r.share),
                    ];
                    if timed {
                        cells.extend([
                            time(r.own_ns),
                            percent(r.own_share),
                            time(r.total_ns),
                            percent(r.total_share),
                        ]);
                    }
                    cells.extend([cut_left(&r.location, location_width.into()), r.function.clone()]);
                    TableRow::new(cells)
                });
                let mut widths = vec![
                    Constraint::Length(7),
                    Constraint::Length(15),
                    Constraint::Length(11),
                    Constraint::Length(11),
                    Constraint::Length(7),
                ];
                let mut header = vec!["PID", "COMMAND", "CALLS", "CALLS/s", "SHARE"];
                if timed {
                    widths.extend([
                        Constraint::Length(10),
                        Constraint::Length(7),
                        Constraint::Length(10),
                        Constraint::Length(7),
                    ]);
                    header.extend(["OWN", "OWN%", "TOTAL", "TOTAL%"]);
                }
                widths.extend([Constraint::Length(location_width), Constraint::Fill(1)]);
                header.extend(["FILE:LINE", "FUNCTION"]);
                let table = Table::new(table_rows, widths)
                .header(
                    TableRow::new(header)
                        .style(Style::new().add_modifier(Modifier::BOLD)),
                )
                .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .block(Block::bordered());
                frame.render_stateful_widget(table, body, &mut state);
                frame.render_widget(
                    Line::from("q quit · space pause · s sort · ↑↓ select · f filter to the selected PID (again: all)"),
                    footer,
                );
            })?;
            if event::poll(Duration::from_millis(100))? {
                if let Event::Key(key) = event::read()? {
                    if key.kind != KeyEventKind::Press {
                        continue;
                    }
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => break,
                        KeyCode::Char(' ') | KeyCode::Char('p') => paused = !paused,
                        KeyCode::Char('s') => {
                            sort = sort.next(timed);
                            sort.apply(&mut rows);
                        }
                        KeyCode::Down => state.select_next(),
                        KeyCode::Up => state.select_previous(),
                        KeyCode::Char('f') => {
                            view.pid = match view.pid {
                                Some(_) => None,
                                None => state.selected().and_then(|i| rows.get(i)).map(|r| r.pid),
                            };
                            refreshed = Instant::now() - interval;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::try_restore()?;
    result
}
