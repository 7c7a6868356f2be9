#!/bin/sh
# Lists every instruction in an ELF that can access data memory, one per line:
#   <address> TAB <mnemonic> TAB <operands>
# Usage: mem-insns.sh <objdump> <elf>
# `make check` compares this list with m3/mem-insns.expected and
# a64/mem-insns.expected, so a compiler or flag change that adds a stack
# spill, a literal-pool load or a different access width is caught.
set -eu
"$1" -d --no-show-raw-insn "$2" | awk -F'\t' '
/^ *[0-9a-f]+:\t/ {
    m = $2; sub(/ +$/, "", m)
    # Thumb-2/AArch32 and AArch64 loads, stores and other memory-touching ops
    if (m ~ /^(ld|st|push|pop|tb[bh]|pld|pli|vld|vst|vpush|vpop|swp|cas|prfm|dc)/) {
        o = $3; sub(/[ \t]*(@|\/\/).*$/, "", o)
        a = $1; gsub(/[ :]/, "", a)
        print a "\t" m "\t" o
    }
}'
