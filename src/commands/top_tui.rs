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
use crate::text::count;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Calls,
    Pid,
    Function,
    File,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Calls => Sort::Pid,
            Sort::Pid => Sort::Function,
            Sort::Function => Sort::File,
            Sort::File => Sort::Calls,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Calls => "calls",
            Sort::Pid => "pid",
            Sort::Function => "function",
            Sort::File => "file",
        }
    }

    fn apply(self, rows: &mut [Row]) {
        match self {
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
        let mut sort = Sort::Calls;
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
                // FILE:LINE gets 3/4 of what the fixed columns leave, and is cut from the left
                // to fit: the file's name and the line stay visible.
                let fixed: u16 = 7 + 15 + 11 + 11 + 7 + 6 + 2;
                let location_width = (body.width.saturating_sub(fixed) / 4 * 3).max(8);
                let table_rows = rows.iter().map(|r| {
                    TableRow::new(vec![
                        r.pid.to_string(),
                        r.process.clone(),
                        count(r.calls),
                        format!("{:.1}", r.rate),
                        format!("{:.1}%", r.share),
                        cut_left(&r.location, location_width.into()),
                        r.function.clone(),
                    ])
                });
                let table = Table::new(
                    table_rows,
                    [
                        Constraint::Length(7),
                        Constraint::Length(15),
                        Constraint::Length(11),
                        Constraint::Length(11),
                        Constraint::Length(7),
                        Constraint::Length(location_width),
                        Constraint::Fill(1),
                    ],
                )
                .header(
                    TableRow::new(vec!["PID", "COMMAND", "CALLS", "CALLS/s", "SHARE", "FILE:LINE", "FUNCTION"])
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
                            sort = sort.next();
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
