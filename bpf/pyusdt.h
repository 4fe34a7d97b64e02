/* SPDX-License-Identifier: Apache-2.0 */
/* Event layout shared by pyusdt.bpf.c and the Rust decoder (single source of truth). */
#ifndef __PYUSDT_H
#define __PYUSDT_H

/* Bounded copies of strings read from the traced process. */
#define MODULE_LEN 128
#define AUDIT_NAME_LEN 64
/* Imports (and, with function probes, calls) in progress per thread; deeper ones are counted,
 * not paired. */
#define SPAN_STACK_DEPTH 64
/* Imports are also timed on their own stack, so that deep recursion cannot cost an import its
 * duration. */
#define IMPORT_STACK_DEPTH 32

/* Bounded copies of a process's command line and of its OTEL_* environment variables (its
 * first event only; the others are never copied). */
#define ARGS_LEN 1024
#define ENV_LEN 4096
/* Audit arguments (opt-in): the first items of the tuple, as raw object memory. */
#define AUDIT_ARGS 3
#define AUDIT_ARG_TYPE_LEN 16
#define AUDIT_ARG_RAW_LEN 128

enum marker {
	MARKER_GC = 0,
	MARKER_IMPORT = 1,
	MARKER_AUDIT = 2,
	MARKER_COUNT = 3,
	/* Not a CPython marker: the description of a process, sent before its first event. */
	MARKER_PROCESS = 4,
	/* An audit event with the raw memory of its first arguments (--audit-args). */
	MARKER_AUDIT_ARGS = 5,
	/* A function entry, return or line (`pyusdt flow`). */
	MARKER_FLOW = 6,
	/* A completed call (function probes: --probes function). */
	MARKER_FUNCTION = 7,
	/* A process exec'd a program (`agent`: look for new interpreter files at once). */
	MARKER_EXEC = 8,
	/* A completed call of code whose names an earlier MARKER_FUNCTION record carried. */
	MARKER_FUNCTION_REF = 9,
	/* An audit event whose name is a string literal of the interpreter image (audit_ref_event). */
	MARKER_AUDIT_REF = 10,
};

/* Indexes of the per-CPU `stats` array, read by user space. */
enum stat {
	STAT_DROP_GC = 0,         /* ring buffer full: GC event lost */
	STAT_DROP_IMPORT = 1,     /* ring buffer full: import event lost */
	STAT_DROP_AUDIT = 2,      /* ring buffer full: audit event lost */
	STAT_UNPAIRED_START = 3,  /* a start overwritten before its done (lost done) */
	STAT_IMPORT_TOO_DEEP = 4, /* imports nested beyond IMPORT_STACK_DEPTH: no duration */
	STAT_FUNC_TABLE_FULL = 5, /* function calls not counted: the counting table is full */
	STAT_DROP_FLOW = 6,       /* ring buffer full: flow event lost */
	STAT_DROP_FUNCTION = 7,   /* ring buffer full: function event lost */
	STAT_CALLS_TOO_DEEP = 8,  /* calls nested beyond SPAN_STACK_DEPTH: no span */
	STAT_STACK_RESET = 9,     /* a thread's stack emptied after a sampling gap */
	STAT_DROP_PROCESS = 10,   /* ring buffer full: a process's description lost */
	STAT_DROP_EXEC = 11,      /* ring buffer full: an exec record lost */
	STAT_UNGATED = 12,        /* a process not held at its start (gate.h): table full, signal refused */
	STAT_COUNT = 13,
};

/* Common head of every event. `start_ns` is 0 when the done half arrived without
 * its start (probes attached mid-collection): the event has no duration. */
struct event_header {
	__u64 start_ns; /* bpf_ktime_get_ns() at the start marker (CLOCK_MONOTONIC) */
	__u64 end_ns;   /* bpf_ktime_get_ns() at the done marker (or the audit marker) */
	__u32 pid;      /* tgid as the host sees it */
	__u32 tid;
	__u8 marker;    /* enum marker */
	__u8 depth;     /* imports (and traced calls) still in progress on the thread at the end */
	__u8 source;    /* enum signal_source: where the event was seen */
	__u8 _pad[5];
};

/* Where an event was seen: a CPython marker, or a hook point of a build without markers
 * (src/discover/hooks.rs), found in the symbol table, among the exported symbols, or derived
 * from an exported function's machine code. */
enum signal_source {
	SOURCE_MARKER = 0,
	SOURCE_SYMBOL_TABLE = 1,
	SOURCE_EXPORTED = 2,
	SOURCE_DERIVED = 3,
};

struct gc_event {
	struct event_header h;
	__s64 collected; /* gc__done: collected + uncollectable objects */
	__s32 generation; /* from gc__start; -1 when the start was not seen */
	__u32 _pad;
};

struct import_event {
	struct event_header h;
	__s32 found; /* import__find__load__done's second argument: 0 when the import raised */
	__u32 nesting; /* imports still in progress on the thread (0: a top-level import) */
	char module[MODULE_LEN];
};

/* --metrics-only: GC and import durations aggregated in the kernel, per process and series,
 * into the buckets of the exported histogram (DURATION_BOUNDS of src/model/metrics.rs), and
 * audit events counted per process and event name: no record per event. */
#define DURATION_BUCKETS 20

struct duration_key {
	__u32 tgid;
	/* gc: the generation (-1: start not seen); import: found (bit 0) | top-level (bit 1) */
	__s32 series;
};

struct duration_agg {
	__u64 events;  /* dones seen */
	__u64 timed;   /* of them, those whose start was seen: in the buckets */
	__u64 sum_ns;  /* of the timed ones */
	__u64 min_ns;  /* of the timed ones (meaningful when timed > 0) */
	__u64 max_ns;
	__s64 extra;   /* gc: objects collected */
	__u64 buckets[DURATION_BUCKETS];
};

struct audit_count_key {
	__u32 tgid;
	__u32 _pad;
	char name[AUDIT_NAME_LEN];
};

struct audit_event {
	struct event_header h;
	__s64 nargs; /* size of the argument tuple; -1 when not read (or unreadable) */
	char name[AUDIT_NAME_LEN];
};

/* Event names raised from C (PySys_Audit("builtins.id", …)) are string literals: they lie in
 * the read-only part of the interpreter image, which the process maps exactly as the file
 * holds it. Such a name is sent as its address in the file, and user space reads it from the
 * file once: no copy of the name per event. Names given to sys.audit() live in Python strings
 * and are still copied (audit_event). One entry per interpreter file with a single audit
 * marker; the attachment's cookie carries its index + 1 in bits 16-31 (0: none). */
#define AUDIT_IMAGES 1024

struct audit_image {
	__u64 site;     /* the audit marker's virtual address in the file */
	__u64 ro_start; /* the file's read-only segments: [ro_start, ro_end), virtual addresses */
	__u64 ro_end;
};

struct audit_ref_event {
	struct event_header h;
	__s64 nargs;
	__u32 image;      /* audit_images index + 1 */
	__u32 _pad;
	__u64 name_vaddr; /* the name's virtual address in that file */
};

/* --metrics-only: audit events with a literal name, counted per process and name address. */
struct audit_ref_count_key {
	__u32 tgid;
	__u32 image;
	__u64 name_vaddr;
};

/* One argument of an audit event: its type's tp_name and the object's memory from offset 16
 * (after ob_refcnt and ob_type), decoded in user space per CPython version. */
struct audit_arg {
	char type[AUDIT_ARG_TYPE_LEN];
	__u8 raw[AUDIT_ARG_RAW_LEN];
	__u32 ok; /* 1 when type and raw were read */
	__u32 _pad;
};

struct audit_args_event {
	struct audit_event base;
	/* The attachment's cookie: ob_size offset in bits 0-7, CPython minor version in 8-15. */
	__u64 layout;
	struct audit_arg args[AUDIT_ARGS];
};

#define PROCESS_ARGS_TRUNCATED 1
#define PROCESS_ENV_TRUNCATED 2

/* Read from the process's own memory at its first event, so that a process that exits
 * before user space gets to /proc/PID is still described (service name, command line). */
struct process_event {
	struct event_header h;
	__u32 args_len; /* bytes of `args` filled (NUL-separated argv), 0 when unreadable */
	__u32 env_len;  /* bytes of `env` filled (NUL-terminated OTEL_*=VALUE entries, whole) */
	/* PROCESS_ARGS_TRUNCATED | PROCESS_ENV_TRUNCATED (env: some OTEL_* entry may be missing,
	 * as the environment was unreadable, too long to walk, or its OTEL_* entries too long) */
	__u32 truncated;
	__u32 _pad;
	char comm[16];
	char args[ARGS_LEN];
	char env[ENV_LEN];
};

/* In-kernel call counting (`pyusdt top`): one entry per (process, code object), keyed by the
 * addresses of its file and function name strings, which live as long as the code object. */
#define FUNC_NAME_LEN 64
#define FUNC_FILE_LEN 128

struct func_key {
	__u32 pid;
	/* The def line when counting entries (tells apart same-named functions of a file, such as
	 * two classes' __init__); 0 when counting returns, whose line varies within a function. */
	__u32 line;
	__u64 file; /* co_filename as UTF-8, address in the process */
	__u64 name; /* co_name */
};

struct func_count {
	__u64 calls;
	/* Timed `top` (time_calls): the calls whose return was seen, their time with the calls
	 * they made (total; a recursive call's only in its outermost call) and without (own). */
	__u64 timed;
	__u64 total_ns;
	__u64 own_ns;
	__u32 line; /* first line (function__entry) or a returning line (function__return) */
	__u32 at_entry; /* 1: counted at function__entry (and timed, with time_calls) */
	char name[FUNC_NAME_LEN]; /* copied once, when the entry is created */
	char file[FUNC_FILE_LEN];
};

enum flow_kind {
	FLOW_ENTRY = 0,
	FLOW_RETURN = 1,
	FLOW_LINE = 2,
};

struct flow_event {
	struct event_header h;
	__u8 kind; /* enum flow_kind */
	__u8 _pad[3];
	__s32 line;
	char name[FUNC_NAME_LEN];
	char file[FUNC_FILE_LEN];
};

/* A code location as the function markers name it: the same names, file and first line in the
 * same process image. Only the first call of a location carries the names (function_event);
 * later ones carry this (function_ref_event), and user space looks the names up. */
struct code_ref {
	__u64 mm;       /* the process image: a new one after exec */
	__u64 name_ptr; /* the marker's function-name argument */
	__u64 file_ptr; /* the marker's file-name argument */
	__s32 line;     /* first line (from function__entry) */
	__u32 tgid;
};

/* A call of at least `min_function_ns`, sent at its return, with its code's names. */
struct function_event {
	struct event_header h;
	struct code_ref code;
	char name[FUNC_NAME_LEN];
	char file[FUNC_FILE_LEN];
};

struct function_ref_event {
	struct event_header h;
	struct code_ref code;
};

/* Function-marker hits of one process on an interpreter of an unverified version: do entries
 * fire at all? */
struct func_hits {
	__u64 entries;
	__u64 returns;
};

/* Bit of a function probe's cookie: count the process's hits in `func_hits`. */
#define FUNC_COUNT_HITS (1ULL << 32)

#endif /* __PYUSDT_H */
