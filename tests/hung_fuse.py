"""A FUSE file system that answers until a flag file exists, then never again: a stand-in for
a hung NFS or FUSE mount. Usage: hung_fuse.py MOUNTPOINT FLAG. Prints "mounted" once usable."""
import ctypes
import os
import struct
import sys
import time

mountpoint, flag = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/dev/fuse", os.O_RDWR)
options = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
if libc.mount(b"hung", mountpoint.encode(), b"fuse", 0, options) != 0:
    print("mount failed:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
print("mounted", flush=True)
# fuse_attr of the root directory: ino, size, blocks, [amc]time, [amc]timensec, mode, nlink,
# uid, gid, rdev, blksize, flags.
ROOT = struct.pack("<QQQQQQIIIIIIIIII", 1, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
while True:
    request = os.read(fd, 1 << 20)
    _, opcode, unique = struct.unpack_from("<IIQ", request)
    if os.path.exists(flag):
        time.sleep(3600)

    def reply(error=0, body=b""):
        os.write(fd, struct.pack("<IiQ", 16 + len(body), error, unique) + body)

    if opcode == 26:  # INIT: protocol 7.31, no capabilities
        reply(0, struct.pack("<IIIIHHIIHHI", 7, 31, 0, 0, 0, 0, 4096, 0, 0, 0, 0) + bytes(28))
    elif opcode == 3:  # GETATTR, never cached
        reply(0, struct.pack("<QII", 0, 0, 0) + ROOT)
    else:
        reply(-38)  # ENOSYS
