@0x9cb8d348d24c4cde;
# The records the shim writes into shared memory and the collector reads.
#
# Every record in a ring is one single-segment Cap'n Proto message in flat form:
# the 8-byte segment table, then the segment. The segment table is also the
# record's length prefix: a reader needs no other framing.
#
# Two kinds of ring exist per vCPU (see src/layout.rs):
#   - the event ring holds `Event` messages only. `Event` has scalar fields only
#     (no pointers), so every event record has the same size: 8 (segment table)
#     + 8 (root pointer) + 64 (data section) = 80 bytes. The shim writes these
#     bytes directly at the offsets in src/record.rs; the tests in that file
#     check the offsets against this schema through the generated code.
#   - the meta ring holds `Meta` messages of any size, written at translation
#     time (never on the per-access hot path): device names and translated
#     blocks with their instructions' bytes and disassembly.

struct Event {
  kind @0 :Kind;
  size @1 :UInt8;        # mem: access size in bytes (1..16); block: instructions in the block
  flags @2 :UInt8;       # mem: bit 0 store, bit 1 I/O (MMIO), bit 2 sign-extended load,
                         #      bit 3 big-endian access
  device @3 :UInt16;     # mem, I/O only: id of a Meta.device of this vCPU's meta ring
  vcpu @4 :UInt16;       # the vCPU that made the event (also implied by the ring)
  icount @5 :UInt64;     # 0-based index, in this vCPU's instruction stream, of the
                         # instruction that made the access (mem) or of the block's
                         # first instruction (block)
  pc @6 :UInt64;         # mem: the accessing instruction's address; block: 0 (see Meta.block)
  vaddr @7 :UInt64;      # mem: virtual address accessed; block: the block's id (Meta.block.id)
  paddr @8 :UInt64;      # mem: physical address (QEMU hwaddr), else 0
  value @9 :UInt64;      # mem: low 8 bytes of the value, little-endian, zero-extended
  valueHi @10 :UInt64;   # mem: bytes 8..16 of a 128-bit access, else 0
  asid @11 :UInt64;      # mem: address-space id (MMU context register; 0 without an MMU)

  enum Kind {
    mem @0;              # a data access (load or store)
    block @1;            # a translated block started executing
  }
}

struct Meta {
  union {
    device @0 :Device;
    block @1 :Block;
  }
}

struct Device {
  id @0 :UInt16;         # as in Event.device, per vCPU
  name @1 :Text;         # QEMU's plugin API name (qemu_plugin_hwaddr_device_name)
}

struct Block {
  id @0 :UInt64;         # unique per translation, process-wide
  pc @1 :UInt64;
  insns @2 :List(Insn);
}

struct Insn {
  pc @0 :UInt64;
  bytes @1 :Data;        # the instruction's bytes, in guest memory order
  disas @2 :Text;        # QEMU's disassembly (qemu_plugin_insn_disas)
  symbol @3 :Text;       # qemu_plugin_insn_symbol, empty when unknown
}
