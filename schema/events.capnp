@0x9cb8d348d24c4cde;
# The records the shim writes into shared memory and the collector reads.
#
# Every message in a ring is one single-segment Cap'n Proto message in flat
# form: the 8-byte segment table, then the segment. The segment table is also
# the message's length prefix: a reader needs no other framing.
#
# Two rings per vCPU (see src/layout.rs):
#   - the event ring holds `Chunk` messages only: a vCPU's events of one kind
#     (memory accesses, or executed blocks), gathered by the shim and
#     published together (at most src/chunk.rs's CHUNK_BYTES). Their records
#     are fixed-size structs with scalar fields only, so the shim writes them
#     at fixed offsets (src/chunk.rs), whose tests check them against this
#     schema through the generated code.
#   - the meta ring holds `Meta` messages of any size, written at translation
#     time or at a device's first access (never per event): device names and
#     translated blocks with their instructions' bytes and disassembly.

struct Chunk {
  firstIndex @0 :UInt64; # how many events of this vCPU were published before
                         # this chunk: an index into its event stream, which
                         # the collectors' commit record counts (src/commit.rs)
  icount @1 :UInt64;     # accesses: the base of their `icountDelta`; blocks:
                         # the icount of the first block's first instruction
  asid @2 :UInt64;       # accesses: the address-space id (MMU context
                         # register; 0 without an MMU) of every access here
  vcpu @3 :UInt16;       # the vCPU whose ring this is
  # One of the two lists holds the chunk's records, the other is null.
  accesses @4 :List(MemAccess);
  blocks @5 :List(BlockRun);
}

# A data access (load or store). A 16-byte access is two records: this one
# (its low 8 bytes in `value`), then one with flag `high half` whose `value`
# holds bytes 8..16 (its other fields repeat this one's); together they are
# one event.
struct MemAccess {
  pc @0 :UInt64;         # the accessing instruction's address
  vaddr @1 :UInt64;      # virtual address accessed
  paddr @2 :UInt64;      # physical address (QEMU hwaddr)
  value @3 :UInt64;      # the value's low 8 bytes, little-endian, zero-extended
  icountDelta @4 :UInt32; # the accessing instruction's icount (0-based index
                         # in this vCPU's instruction stream) - Chunk.icount
  size @5 :UInt8;        # access size in bytes (1..16)
  flags @6 :UInt8;       # bit 0 store, bit 1 I/O (MMIO), bit 2 sign-extended
                         # load, bit 3 big-endian access, bit 4 high half
  device @7 :UInt16;     # I/O only: id of a Meta.device of this vCPU's meta
                         # ring; 0xffff: none
}

# A translated block started executing. Its icount follows from the chunk's:
# each block of a chunk but the last ran whole (the shim starts a new chunk
# after a block that stopped early, on an exception), and the last one's
# count is cut by the next block chunk's icount.
struct BlockRun {
  block @0 :UInt64;      # the block's id (Meta.block.id): bits 0..10 its
                         # instruction count - 1, bits 10.. a sequence number
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
  id @0 :UInt64;         # unique per translation, process-wide (BlockRun.block)
  pc @1 :UInt64;
  insns @2 :List(Insn);
}

struct Insn {
  pc @0 :UInt64;
  bytes @1 :Data;        # the instruction's bytes, in guest memory order
  disas @2 :Text;        # QEMU's disassembly (qemu_plugin_insn_disas)
  symbol @3 :Text;       # qemu_plugin_insn_symbol, empty when unknown
}
