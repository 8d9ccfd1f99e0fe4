"""Writes the FAKE dummy_data/ files of the fer2013 builder (random pixels).

Run from the project root:
  .venv/bin/python tfds_builders/fer2013/make_dummy_data.py

dummy_data/fer2013.csv, dummy_data/fer2013new.csv: 11 Training, 4 PublicTest,
3 PrivateTest rows. dummy_data/no_private_test/: the same FER2013 rows without
PrivateTest, gzipped (fer2013.csv.gz), beside the full fer2013new.csv, to test
a withheld Usage and the .gz reader. No real FER2013 data is used.
"""

import gzip
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / 'dummy_data'

# (Usage, FER2013 label, FER+ image name, FER+ votes: neutral, happiness,
# surprise, sadness, anger, disgust, fear, contempt, unknown, NF).
ROWS = [
    ('Training', 0, 'fer0000000.png', (4, 0, 0, 1, 3, 2, 0, 0, 0, 0)),
    ('Training', 1, 'fer0000001.png', (0, 6, 1, 1, 0, 0, 0, 0, 2, 0)),
    ('Training', 2, 'fer0000002.png', (0, 0, 0, 0, 0, 0, 0, 0, 10, 0)),
    ('Training', 3, 'fer0000003.png', (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),
    ('Training', 4, 'fer0000004.png', (0, 0, 0, 0, 0, 0, 0, 5, 1, 4)),
    ('Training', 5, 'fer0000005.png', (0, 0, 5, 0, 0, 0, 5, 0, 0, 0)),
    ('Training', 6, '', (10, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    ('Training', 0, 'fer0000007.png', (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)),
    ('Training', 1, 'fer0000008.png', (0, 0, 0, 7, 2, 0, 0, 0, 1, 0)),
    ('Training', 2, 'fer0000009.png', (2, 0, 0, 0, 0, 0, 6, 1, 1, 0)),
    ('Training', 3, 'fer0000010.png', (4, 2, 2, 0, 0, 0, 0, 0, 2, 0)),
    ('PublicTest', 4, 'fer0000011.png', (5, 1, 1, 1, 1, 1, 0, 0, 0, 0)),
    ('PublicTest', 5, 'fer0000012.png', (0, 0, 0, 0, 4, 4, 0, 0, 2, 0)),
    ('PublicTest', 6, 'fer0000013.png', (0, 0, 0, 0, 9, 1, 0, 0, 0, 0)),
    ('PublicTest', 0, 'fer0000014.png', (0, 0, 3, 0, 0, 0, 0, 0, 0, 0)),
    ('PrivateTest', 1, 'fer0000015.png', (0, 0, 0, 0, 0, 8, 2, 0, 0, 0)),
    ('PrivateTest', 2, 'fer0000016.png', (6, 0, 0, 0, 0, 0, 0, 0, 0, 4)),
    ('PrivateTest', 3, '', (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),
]

FERPLUS_HEADER = ('Usage,Image name,neutral,happiness,surprise,sadness,anger,'
                  'disgust,fear,contempt,unknown,NF')


def fer2013_lines(rows, seed=0):
  rng = np.random.default_rng(seed)
  lines = ['emotion,pixels,Usage']
  for i, (usage, label, _, _) in enumerate(rows):
    img = rng.integers(0, 256, size=48 * 48)
    img[0], img[-1] = i, 255 - i  # Fixed corners; full 0..255 range.
    lines.append(f'{label},{" ".join(map(str, img))},{usage}')
  return lines


def ferplus_lines(rows):
  return [FERPLUS_HEADER] + [
      f'{usage},{name},{",".join(map(str, votes))}'
      for usage, _, name, votes in rows]


def main(out=OUT):
  out = pathlib.Path(out)
  sub = out / 'no_private_test'
  sub.mkdir(parents=True, exist_ok=True)
  fer = fer2013_lines(ROWS)
  plus = '\n'.join(ferplus_lines(ROWS)) + '\n'
  (out / 'fer2013.csv').write_text('\n'.join(fer) + '\n')
  (out / 'fer2013new.csv').write_text(plus)
  # Same rows minus PrivateTest (which come last), gzipped reproducibly.
  n_private = sum(r[0] == 'PrivateTest' for r in ROWS)
  data = ('\n'.join(fer[:len(fer) - n_private]) + '\n').encode()
  with open(sub / 'fer2013.csv.gz', 'wb') as f:
    with gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0) as gz:
      gz.write(data)
  (sub / 'fer2013new.csv').write_text(plus)


if __name__ == '__main__':
  main()
