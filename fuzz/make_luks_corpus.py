#!/usr/bin/env python3
"""Seeds of fuzz_luks_header: the first 4 KiB (the header sector and the
gap before slot 0's key material) of LUKS volumes made by imgtool and
qemu-img with the harness's passphrase "fuzz" and iter-time=1, so that
the harness's keyed open of a seed takes milliseconds.

The harness reads zeroes past its input, so a seed's key material is all
zeroes and "fuzz" opens none of them.  One more seed makes it open: its
master key digest is rewritten to match the master key that all-zero
material of slot 0 decrypts to (aes-256-xts-plain64, sha256), so the
unlocked paths (cipher setup, sector encryption) are fuzzed too.

    fuzz/make_luks_corpus.py OUTDIR [IMGTOOL]

The committed seeds in fuzz/corpus/luks/ were made with it.
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile

HEAD = 4096
STRIPES = 4000


def af_merge(material, key_len, hash_name):
    """LUKS1 anti-forensic merge: diffuse(d ^ stripe) over all but the
    last stripe, the key is d ^ the last stripe."""
    dlen = hashlib.new(hash_name).digest_size

    def diffuse(buf):
        out = b""
        for j in range((len(buf) + dlen - 1) // dlen):
            chunk = buf[j * dlen:(j + 1) * dlen]
            out += hashlib.new(hash_name, struct.pack(">I", j) +
                               chunk).digest()[:len(chunk)]
        return out

    d = bytes(key_len)
    for i in range(STRIPES - 1):
        stripe = material[i * key_len:(i + 1) * key_len]
        d = diffuse(bytes(a ^ b for a, b in zip(d, stripe)))
    last = material[(STRIPES - 1) * key_len:STRIPES * key_len]
    return bytes(a ^ b for a, b in zip(d, last))


def unlockable_with_zero_material(head, passphrase):
    """head (an aes-256-xts-plain64 sha256 header) with its master key
    digest set so that slot 0 opens when its material reads as zeroes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, \
        modes
    key_len = struct.unpack(">I", head[108:112])[0]
    assert head[40:51] == b"xts-plain64" and key_len == 64
    mk_salt, mk_iter = head[132:164], struct.unpack(">I", head[164:168])[0]
    slot = head[208:256]
    iters, salt = struct.unpack(">I", slot[4:8])[0], slot[8:40]
    dk = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iters, key_len)
    zero = bytes(key_len * STRIPES)
    plain = b""
    for sector in range(len(zero) // 512):
        tweak = struct.pack("<Q", sector) + bytes(8)
        dec = Cipher(algorithms.AES(dk), modes.XTS(tweak)).decryptor()
        plain += dec.update(zero[sector * 512:(sector + 1) * 512])
    mk = af_merge(plain, key_len, "sha256")
    digest = hashlib.pbkdf2_hmac("sha256", mk, mk_salt, mk_iter, 20)
    return head[:112] + digest + head[132:]


def main():
    out = sys.argv[1]
    imgtool = sys.argv[2] if len(sys.argv) > 2 else "build/imgtool"
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        pw = os.path.join(d, "pw")
        with open(pw, "w") as f:
            f.write("fuzz")
        obj = ["--object", f"secret,id=s,file={pw}"]
        seeds = [
            ("imgtool-aes256-xts-plain64-sha256", imgtool, "", None),
            ("imgtool-aes128-cbc-essiv-sha1", imgtool,
             ",cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,"
             "hash-alg=sha1", None),
            ("imgtool-aes192-xts-plain-sha512", imgtool,
             ",cipher-alg=aes-192,ivgen-alg=plain,hash-alg=sha512", None),
            ("qemu-aes256-xts-plain64-sha256", "qemu-img", "", None),
            ("qemu-aes256-cbc-essiv-sha256-2slots", "qemu-img",
             ",cipher-mode=cbc,ivgen-alg=essiv", "state=active,new-secret=s,"
             "iter-time=1,keyslot=3"),
        ]
        for name, tool, extra, amend in seeds:
            img = os.path.join(d, name)
            for _ in range(30):   # qemu-img's calibration may fail
                p = subprocess.run([tool, "create", "-q", "-f", "luks", *obj,
                                    "-o", "key-secret=s,iter-time=1" + extra,
                                    img, "1M"], capture_output=True,
                                   text=True)
                if p.returncode == 0:
                    break
            p.check_returncode()
            if amend:
                subprocess.run(["qemu-img", "amend", *obj, "--image-opts",
                                f"driver=luks,key-secret=s,file.filename={img}",
                                "-o", amend], check=True)
            with open(img, "rb") as f:
                head = f.read(HEAD)
            with open(os.path.join(out, name), "wb") as o:
                o.write(head)
            if name == "imgtool-aes256-xts-plain64-sha256":
                with open(os.path.join(out, "imgtool-unlocks-zero-material"),
                          "wb") as o:
                    o.write(unlockable_with_zero_material(head, b"fuzz"))


if __name__ == "__main__":
    main()
