#!/usr/bin/env bash
# Regenerates the bad-image corpus in this folder (see README.md).
# Needs oiiotool (openimageio-tools) and python3. Output is deterministic
# except for the small valid images' metadata (oiiotool stamps a date).
set -euo pipefail
cd "$(dirname "$0")"

# Valid sources: a noisy gradient so that truncation lands inside pixel data.
PATTERN=(--pattern "fill:topleft=0,0,0:topright=1,0,0:bottomleft=0,1,0:bottomright=0,0,1" 64x48 3
         --noise:type=uniform:min=0:max=0.2:seed=7)
oiiotool "${PATTERN[@]}" -d uint8 -o valid_64x48.png
oiiotool "${PATTERN[@]}" -d uint8 --attrib Compression jpeg:90 -o valid_64x48.jpg
oiiotool --pattern constant:color=0.5 1x1 1 -d uint8 -o one_pixel.png
oiiotool --pattern constant:color=0.1,0.2,0.3,0.4,0.5 8x8 5 -d uint8 -o five_channels.tif
oiiotool valid_64x48.png --compression zip -o zip_strips.tif

python3 - <<'PY'
import os, random, struct, zlib

def tiff(width, height, spp, compression, data, strip_bytes=None):
    """Little-endian classic TIFF: header, IFD, BitsPerSample array, one strip."""
    n_entries = 10
    ifd_off = 8
    bps_off = ifd_off + 2 + 12 * n_entries + 4
    bps = struct.pack('<%dH' % spp, *([8] * spp)) if spp > 2 else b''
    data_off = bps_off + len(bps)
    short, long_ = 3, 4
    entries = [
        (256, long_, 1, width),                      # ImageWidth
        (257, long_, 1, height),                     # ImageLength
        (258, short, spp, bps_off if spp > 2 else 8 | (8 << 16 if spp == 2 else 0)),
        (259, short, 1, compression),                # 1 none, 8 deflate
        (262, short, 1, 2 if spp >= 3 else 1),       # RGB / MinIsBlack
        (273, long_, 1, data_off),                   # StripOffsets
        (277, short, 1, spp),                        # SamplesPerPixel
        (278, long_, 1, height),                     # RowsPerStrip: one strip
        (279, long_, 1, len(data) if strip_bytes is None else strip_bytes),
        (284, short, 1, 1),                          # PlanarConfig contig
    ]
    assert len(entries) == n_entries
    out = b'II*\x00' + struct.pack('<I', ifd_off) + struct.pack('<H', n_entries)
    for tag, typ, count, value in entries:
        out += struct.pack('<HHII', tag, typ, count, value)
    out += struct.pack('<I', 0) + bps
    assert len(out) == data_off
    return out + data

# Valid uncompressed 64x48 RGB TIFF with the IFD before the pixels.
rng = random.Random(1234)
pixels = bytes(rng.randrange(256) for _ in range(64 * 48 * 3))
valid = tiff(64, 48, 3, 1, pixels)
open('valid_64x48.tif', 'wb').write(valid)
# Truncated: header and IFD intact, pixel data cut in half.
open('truncated.tif', 'wb').write(valid[:len(valid) - len(pixels) // 2])
# Corrupt header: byte-order mark and magic number damaged.
open('corrupt_header.tif', 'wb').write(b'IX+\x00' + valid[4:])

# Decompression bombs: deflate strips claiming 200000^2, 50000^2 and 10^6^2
# RGB pixels with 4 KB of data (OIIO itself refuses > 32 GiB, so the
# 50000^2 = 7.5 GB one exercises our own budget check).
tiny = zlib.compress(b'\x00' * 4096, 9)
open('bomb_200000x200000.tif', 'wb').write(tiff(200000, 200000, 3, 8, tiny, 2**31))
open('bomb_50000x50000.tif', 'wb').write(tiff(50000, 50000, 3, 8, tiny, 2**31))
open('bomb_1000000x1000000.tif', 'wb').write(tiff(1000000, 1000000, 3, 8, tiny, 2**31))

# PNG claiming 200000x200000 RGB with a tiny IDAT.
def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)
ihdr = struct.pack('>IIBBBBB', 200000, 200000, 8, 2, 0, 0, 0)
png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', tiny) + chunk(b'IEND', b'')
open('bomb_200000x200000.png', 'wb').write(png)
# And 10^6 x 10^6 16-bit RGBA (8 TB; libpng's default user limit is 10^6).
ihdr = struct.pack('>IIBBBBB', 1000000, 1000000, 16, 6, 0, 0, 0)
png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', tiny) + chunk(b'IEND', b'')
open('bomb_1000000x1000000.png', 'wb').write(png)

# Truncated / corrupt PNG and JPEG from the valid encodings.
png = open('valid_64x48.png', 'rb').read()
open('truncated.png', 'wb').write(png[:len(png) // 2])
open('corrupt_header.png', 'wb').write(b'\x89PNX' + png[4:])
open('png_named.jpg', 'wb').write(png)
jpg = open('valid_64x48.jpg', 'rb').read()
open('truncated.jpg', 'wb').write(jpg[:len(jpg) // 2])
# SOI intact, then the first marker's bytes overwritten with garbage.
open('corrupt_header.jpg', 'wb').write(jpg[:2] + b'\x13\x37\x13\x37' + jpg[6:])

# Headers that made OpenImageIO 2.4 misbehave, found by fuzzing:
# RowsPerStrip 2^31 (its TIFF reader frees a bad pointer: the process
# aborts) and a tEXt chunk before IDAT declaring 1.8 GB (libpng allocates it).
# The TIFF is valid_64x48.png written by oiiotool with deflate in strips of
# 32 rows (zip_strips.tif, made above), its RowsPerStrip entry rewritten.
tif = bytearray(open('zip_strips.tif', 'rb').read())
ifd = struct.unpack_from('<I', tif, 4)[0]
for i in range(struct.unpack_from('<H', tif, ifd)[0]):
    entry = ifd + 2 + 12 * i
    if struct.unpack_from('<H', tif, entry)[0] == 278:
        struct.pack_into('<HII', tif, entry + 2, 4, 1, 2**31)
        break
else:
    raise SystemExit('zip_strips.tif has no RowsPerStrip')
open('strip_rows_2pow31.tif', 'wb').write(bytes(tif))
os.remove('zip_strips.tif')
ihdr_end = 8 + 8 + 13 + 4
open('long_text_chunk.png', 'wb').write(
    png[:ihdr_end] + struct.pack('>I', 1864398532) + b'tEXtComment\x00abc' +
    png[ihdr_end:])

# Random garbage and an empty file.
open('garbage.png', 'wb').write(bytes(random.Random(99).randrange(256) for _ in range(2048)))
open('empty.png', 'wb').write(b'')
PY
ls -l
