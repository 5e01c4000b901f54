#!/usr/bin/env python3
"""Writes well-formed starting inputs for the virtio queue fuzz targets (seeds/<target>/):
a 16-entry ring with valid chains, so the fuzzer mutates from requests that reach the
device code instead of from an empty ring. Layout: see src/lib.rs (`run`)."""
import os, struct

DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
here = os.path.dirname(os.path.abspath(__file__))

def header(kicks, event_idx=0):
    h = bytes([4]) + struct.pack("<HHH", DESC // 16, AVAIL // 16, USED // 16)
    h += bytes([event_idx, len(kicks) - 1]) + b"".join(struct.pack("<H", k) for k in kicks)
    return h

def image(chains, extra):
    """chains: list of lists of (addr, len, flags); extra: {addr: bytes}."""
    mem = bytearray(0x8000)
    i = 0
    heads = []
    for chain in chains:
        heads.append(i)
        for j, (addr, ln, fl) in enumerate(chain):
            nxt = i + 1 if j + 1 < len(chain) else 0
            fl |= 1 if j + 1 < len(chain) else 0  # VRING_DESC_F_NEXT
            struct.pack_into("<QIHH", mem, DESC + 16 * i, addr, ln, fl, nxt)
            i += 1
    for k, h in enumerate(heads):
        struct.pack_into("<H", mem, AVAIL + 4 + 2 * k, h)
    for addr, data in extra.items():
        mem[addr:addr + len(data)] = data
    return bytes(mem)

W = 2  # VRING_DESC_F_WRITE

def write(target, name, data):
    d = os.path.join(here, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# virtio-blk: IN, OUT, FLUSH, GET_ID.
reqs = []
extra = {}
for n, (kind, sector) in enumerate([(0, 0), (1, 8), (4, 0), (8, 0)]):
    hdr = 0x4000 + 0x20 * n
    extra[hdr] = struct.pack("<IIQ", kind, 0, sector)
    data_flags = W if kind in (0, 8) else 0
    reqs.append([(hdr, 16, 0), (0x5000 + 0x200 * n, 512 if kind != 8 else 20, data_flags), (0x7000 + n, 1, W)])
write("blk_queue", "seed-requests", bytes([0]) + header([4, 4]) + image(reqs, extra))

# virtio-rng: two writable buffers.
write("rng_queue", "seed-buffers", header([2]) + image([[(0x4000, 64, W)], [(0x5000, 256, W)]], {}))

# virtio-net TX: header + frame in two descriptors, and in one.
tx = [[(0x4000, 12, 0), (0x5000, 60, 0)], [(0x6000, 72, 0)]]
write("net_queue", "seed-tx", bytes([0x05]) + header([2]) + image(tx, {0x4000: bytes([1]) + bytes(11)}))
# virtio-net RX, mergeable: two frames from the backend, four 1 KiB buffers.
frames = struct.pack("<HBB", 20, 0, 0xab) + struct.pack("<HBB", 2, 10, 0xcd)
rx = [[(0x4000 + 0x400 * k, 1024, W)] for k in range(4)]
write("net_queue", "seed-rx-mergeable", bytes([0x23]) + frames + header([4, 4], 1) + image(rx, {}))
write("net_queue", "seed-rx-plain", bytes([0x10]) + struct.pack("<HBB", 20, 0, 1) + header([4]) + image(rx, {}))
