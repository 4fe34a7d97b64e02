// SPDX-License-Identifier: Apache-2.0
/* Process description: the first event of a process (and the first after an exec) sends its
 * command line and its OTEL_* environment entries, read from its memory, bounded.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_PROCESS_H
#define PYUSDT_PROCESS_H

/* Processes that exited or started another program (forget_exited, forget_exec): a CPU's
 * memory of the last process it saw described (noted_here) holds only while none was
 * forgotten since, as its PID could be reused, or describe another program. */
__u64 processes_forgotten = 0;

struct noted {
	__u32 tgid;
	__u32 _pad;
	__u64 forgotten; /* processes_forgotten when it was noted */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct noted);
} noted_here SEC(".maps");

/* Processes that have sent an event since they started their program (forget_exec). The first
 * event of a process wakes user space at once, so that it reads /proc/PID (command line,
 * OTEL_SERVICE_NAME …) while the process still exists: a short-lived process could otherwise
 * be gone before a batched wakeup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} seen_tgids SEC(".maps");

/* Copies user memory [start, end) into `dst` (at most cap - 1 bytes, cap a power of two);
 * returns the bytes copied, 0 on failure. */
static __always_inline __u32 copy_user(char *dst, __u32 cap, unsigned long start,
				       unsigned long end)
{
	if (end <= start)
		return 0;
	__u64 len = end - start;
	if (len > cap - 1)
		len = cap - 1;
	/* The mask is the bound the verifier sees: len < cap whatever clang made of the test. */
	len &= cap - 1;
	if (len == 0 || bpf_probe_read_user(dst, len, (void *)start) < 0)
		return 0;
	return len;
}

/* The environment walk of note_process: only OTEL_* entries are copied, the others are read
 * a chunk at a time into this CPU's scratch (to find their end), which is cleared after. A
 * process's secrets (API keys, tokens in its environment) never reach the ring buffer. */
#define ENV_CHUNK 256
/* Entries (or chunks of long entries) looked at: 2048 * 255 bytes at least, 510 KiB. */
#define ENV_WALK_STEPS 2048
/* Without bpf_loop (kernels before 5.17) the walk is a loop that the verifier follows step by
 * step, in every program that describes processes: 512 steps exceed its limit, 64 do not. A
 * longer environment is then read from /proc/PID/environ by user space (incomplete walk). */
#define ENV_WALK_STEPS_UNROLLED 64

struct env_scratch {
	/* OTEL_* entries. Twice ENV_LEN, so that the verifier sees that a copy of at most ENV_LEN
	 * bytes from an offset below ENV_LEN stays inside. */
	char out[2 * ENV_LEN];
	char chunk[ENV_CHUNK] __attribute__((aligned(8))); /* cleared with 8-byte stores */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct env_scratch);
} env_scratch SEC(".maps");

struct env_walk {
	unsigned long p;   /* the next byte to look at */
	unsigned long end;
	__u32 len;         /* bytes of `out` filled: whole entries, each with its NUL */
	bool in_entry;     /* p is inside an entry not copied (one longer than a chunk) */
	bool incomplete;   /* an OTEL_* entry may be missing */
};

/* One step of the walk; 1 ends it. A bpf_loop callback: verified once, whatever the number of
 * steps. */
static long env_step(__u32 index, void *ctx)
{
	struct env_walk *w = ctx;
	if (w->p >= w->end)
		return 1;
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	if (!s) {
		w->incomplete = true;
		return 1;
	}
	long n = bpf_probe_read_user_str(s->chunk, ENV_CHUNK, (void *)w->p);
	if (n <= 0) {
		w->incomplete = true;
		return 1;
	}
	if (!w->in_entry && n > 5 && s->chunk[0] == 'O' && s->chunk[1] == 'T' &&
	    s->chunk[2] == 'E' && s->chunk[3] == 'L' && s->chunk[4] == '_') {
		__u32 len = w->len;
		if (len >= ENV_LEN) {
			w->incomplete = true;
			return 1;
		}
		barrier_var(len); /* keep the mask: it is the bound the verifier sees */
		len &= ENV_LEN - 1;
		__u32 room = ENV_LEN - len;
		long m = bpf_probe_read_user_str(s->out + len, room, (void *)w->p);
		/* Unreadable, or cut to fit (m == room): not kept; user space reads /proc. */
		if (m <= 0 || m >= room) {
			w->incomplete = true;
			return 1;
		}
		w->len = len + m;
		w->p += m;
		return 0;
	}
	if (n < ENV_CHUNK) {
		/* The rest of the entry and its NUL were in the chunk. */
		w->p += n;
		w->in_entry = false;
	} else {
		w->p += ENV_CHUNK - 1;
		w->in_entry = true;
	}
	return 0;
}

/* Copies the OTEL_* entries of [start, end) into `dst` (ENV_LEN bytes); returns the bytes
 * copied and sets `incomplete` when one may be missing. */
static __always_inline __u32 copy_otel_env(char *dst, unsigned long start, unsigned long end,
					   bool *incomplete)
{
	struct env_walk w = { .p = start, .end = end };
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_loop)) {
		bpf_loop(ENV_WALK_STEPS, env_step, &w, 0);
	} else {
		for (__u32 i = 0; i < ENV_WALK_STEPS_UNROLLED; i++)
			if (env_step(i, &w))
				break;
	}
	*incomplete = w.incomplete || w.p < w.end;
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(s->chunk, 0, ENV_CHUNK);
	__u32 len = w.len;
	if (len == 0 || len >= ENV_LEN)
		return 0;
	barrier_var(len);
	len &= ENV_LEN - 1;
	if (bpf_probe_read_kernel(dst, len, s->out) < 0)
		return 0;
	return len;
}

/* At a process's first event (and its first after an exec): describe it and wake user space
 * at once. */
static __always_inline void note_process(__u64 id, __u64 now)
{
	__u32 tgid = id >> 32;
	if (bpf_map_lookup_elem(&seen_tgids, &tgid))
		return;
	__u8 one = 1;
	bpf_map_update_elem(&seen_tgids, &tgid, &one, BPF_ANY);
	struct process_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_PROCESS);
		return; /* user space falls back to /proc/PID */
	}
	fill_header(&e->h, id, MARKER_PROCESS, now, now, 0);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start), arg_end = BPF_CORE_READ(mm, arg_end);
	unsigned long env_start = BPF_CORE_READ(mm, env_start), env_end = BPF_CORE_READ(mm, env_end);
	e->args_len = copy_user(e->args, ARGS_LEN, arg_start, arg_end);
	bool env_incomplete = false;
	e->env_len = copy_otel_env(e->env, env_start, env_end, &env_incomplete);
	e->truncated = 0;
	e->_pad = 0;
	if (arg_end > arg_start && arg_end - arg_start > e->args_len)
		e->truncated |= PROCESS_ARGS_TRUNCATED;
	if (env_incomplete)
		e->truncated |= PROCESS_ENV_TRUNCATED;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

#endif /* PYUSDT_PROCESS_H */
