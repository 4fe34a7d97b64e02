/* SPDX-License-Identifier: Apache-2.0 */
/* USDT arguments read straight from the saved registers.
 *
 * libbpf's bpf_usdt_arg() (usdt.bpf.h) finds the attachment's argument spec again for every
 * argument, in a subprogram, and copies the register with bpf_probe_read_kernel(): 87 ns per
 * argument on the test machine, where an empty program costs 70 ns. The markers that fire per
 * call or per audit event keep their arguments in registers on every build seen (3.9:
 * "8@%r14 8@%r15 -4@%eax", Debian's 3.11: "8@%rbp 8@%r12 -4@%eax"). Here the spec is looked
 * up once per program run (usdt_spec), and a register argument is read from the context at a
 * constant offset. Any other kind (a stack slot, a constant, another architecture) goes
 * through bpf_usdt_arg(), so the result is the same. */
#pragma once

#include <stddef.h>
#include <bpf/usdt.bpf.h>

/* The attachment's argument spec, or 0 (then every argument reads as 0). */
static __always_inline struct __bpf_usdt_spec *usdt_spec(struct pt_regs *ctx)
{
	int id = __bpf_usdt_spec_id(ctx);
	if (id < 0)
		return 0;
	return bpf_map_lookup_elem(&__bpf_usdt_specs, &id);
}

/* The user-supplied cookie of the attachment (libbpf keeps it in the spec). */
static __always_inline __u64 usdt_spec_cookie(const struct __bpf_usdt_spec *spec)
{
	return spec ? spec->usdt_cookie : 0;
}

/* A general-purpose register saved in `ctx`, by its offset in struct pt_regs; false for an
 * offset that is not one (the caller falls back to bpf_usdt_arg). The verifier accepts only
 * constant offsets into the context, hence the switch; and each load is written in assembly,
 * or clang merges the cases into one load at a computed offset, which the verifier refuses. */
static __always_inline bool usdt_reg(struct pt_regs *ctx, short off, unsigned long *val)
{
#if defined(__TARGET_ARCH_x86)
#define USDT_REG(r)                                                                                \
	case offsetof(struct pt_regs, r):                                                          \
		asm volatile("%[v] = *(u64 *)(%[ctx] + %[off])"                                     \
			     : [v] "=r"(*val)                                                      \
			     : [ctx] "r"(ctx), [off] "i"(offsetof(struct pt_regs, r)));            \
		return true
	switch (off) {
		USDT_REG(rax);
		USDT_REG(rbx);
		USDT_REG(rcx);
		USDT_REG(rdx);
		USDT_REG(rsi);
		USDT_REG(rdi);
		USDT_REG(rbp);
		USDT_REG(rsp);
		USDT_REG(r8);
		USDT_REG(r9);
		USDT_REG(r10);
		USDT_REG(r11);
		USDT_REG(r12);
		USDT_REG(r13);
		USDT_REG(r14);
		USDT_REG(r15);
	}
#undef USDT_REG
#endif
	return false;
}

/* Argument `n` (a constant) of the marker, as bpf_usdt_arg() would return it; 0 if absent. */
static __always_inline long usdt_arg(struct pt_regs *ctx, const struct __bpf_usdt_spec *spec,
				     __u64 n)
{
	if (!spec || n >= BPF_USDT_MAX_ARG_CNT || n >= spec->arg_cnt)
		return 0;
	const struct __bpf_usdt_arg_spec *arg = &spec->args[n];
	unsigned long raw;
	if (arg->arg_type != BPF_USDT_ARG_REG || !usdt_reg(ctx, arg->reg_off, &raw)) {
		long val = 0;
		bpf_usdt_arg(ctx, n, &val);
		return val;
	}
	/* Narrower arguments (-4@%eax): clear, or sign-extend, the upper bits, as libbpf does. */
	raw <<= arg->arg_bitshift;
	if (arg->arg_signed)
		return (long)raw >> arg->arg_bitshift;
	return raw >> arg->arg_bitshift;
}
