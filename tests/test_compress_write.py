"""Which clusters `convert -c` stores compressed: the same ones qemu-img
does, cluster by cluster, also where compression barely pays - imgtool
turns clusters away early when a quick test finds nothing to gain (zlib),
and that test must not cost clusters QEMU would compress.
"""
import random

from conftest import imgtool, qemu_img, qemu_check_clean, same_content
from test_compress_read import compressed_extents

CS = 64 * 1024


def compressed_clusters(path):
    """Guest cluster indexes whose L2 entry is compressed."""
    cs, extents = compressed_extents(path)
    return {guest // cs for guest, _, _ in extents}


def edge_of_compressibility():
    """Clusters around the point where compression stops paying: random
    bytes then zeroes, the random part growing to a full cluster; and
    random bytes from alphabets of 256 down to 240 symbols (only Huffman
    coding gains, a fraction of a percent at the top)."""
    r = random.Random(4)
    out = bytearray()
    for k in range(CS - 1024, CS + 1, 64):
        out += r.randbytes(k) + bytes(CS - k)
    for a in range(256, 239, -1):
        out += bytes(r.choices(range(a), k=CS))
    return bytes(out)


def test_compressed_or_plain_as_qemu_decides(tmp):
    """zlib: the early test is libdeflate's fastest level.  (zstd has no
    such test; on these clusters zstd level 3 stores every block raw, in
    QEMU too, so they would test nothing there.)"""
    src = tmp / "src.raw"
    src.write_bytes(edge_of_compressibility())
    ours, ref = tmp / "ours.qcow2", tmp / "ref.qcow2"
    opts = ["-o", "compression_type=zlib"]
    imgtool("convert", "-c", "-f", "raw", "-O", "qcow2", *opts, src, ours)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", *opts, src, ref)
    want = compressed_clusters(ref)
    # the spectrum really straddles the edge
    n = len(src.read_bytes()) // CS
    assert 0 < len(want) < n
    assert compressed_clusters(ours) == want
    qemu_check_clean(ours)
    assert same_content(src, ours, "raw", "qcow2")
