package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The PostgreSQL dump stream: what a PostgreSQL backup carries (encrypted
// by internal/admin). It is written from one REPEATABLE READ snapshot and
// read back by verify and restore. Every value is one of the copy's
// canonical kinds (int64, string, []byte, NULL), so the stream does not
// depend on PostgreSQL's version or on COPY's text and binary formats.
//
//	stream  = magic "QPCPGDMP" uvarint(version=1) uvarint(schema_version) table* 'Z'
//	table   = 'T' str(name) uvarint(ncols) (str(col) kind)* row* end
//	row     = 'R' value{ncols}
//	value   = 'n' | 'i' int64-BE | 't' str | 'b' str
//	end     = 'E' uvarint(rows) digest[32]
//	str     = uvarint(len) bytes
//
// Tables come in copyPlan order, each at most once, with their columns
// sorted (or, for schema_migrations, the plan's columns); every row's values match the column kinds; each 'E' repeats the
// table's row count and order-independent checksum (tableDigest), which the
// reader recomputes. Nothing may follow 'Z'.

const (
	dumpMagic      = "QPCPGDMP"
	dumpVersion    = 1
	maxDumpName    = 128
	maxDumpCols    = 128
	maxDumpValue   = 64 << 20 // far above the 5 MiB payload cap
	dumpBufferSize = 64 << 10
)

// ErrDumpCorrupt: a PostgreSQL backup's payload does not decode as a dump
// or its checksums do not match its rows.
var ErrDumpCorrupt = errors.New("store: PostgreSQL backup payload is damaged")

// dumpWriter encodes a dump stream; the first error sticks.
type dumpWriter struct {
	w   *bufio.Writer
	err error
	buf [binary.MaxVarintLen64]byte
}

func newDumpWriter(w io.Writer, schemaVersion int) *dumpWriter {
	d := &dumpWriter{w: bufio.NewWriterSize(w, dumpBufferSize)}
	d.bytes([]byte(dumpMagic))
	d.uvarint(dumpVersion)
	d.uvarint(uint64(schemaVersion))
	return d
}

func (d *dumpWriter) bytes(b []byte) {
	if d.err == nil {
		_, d.err = d.w.Write(b)
	}
}

func (d *dumpWriter) byte(b byte) {
	if d.err == nil {
		d.err = d.w.WriteByte(b)
	}
}

func (d *dumpWriter) uvarint(v uint64) { d.bytes(binary.AppendUvarint(d.buf[:0], v)) }

func (d *dumpWriter) str(b []byte) {
	d.uvarint(uint64(len(b)))
	d.bytes(b)
}

func (d *dumpWriter) table(t planned) {
	d.byte('T')
	d.str([]byte(t.name))
	d.uvarint(uint64(len(t.cols)))
	for i, c := range t.cols {
		d.str([]byte(c))
		d.byte(byte(t.kinds[i]))
	}
}

// row writes canonical values (see canonical).
func (d *dumpWriter) row(vals []any) {
	d.byte('R')
	for _, v := range vals {
		switch x := v.(type) {
		case nil:
			d.byte('n')
		case int64:
			d.byte('i')
			d.bytes(binary.BigEndian.AppendUint64(d.buf[:0], uint64(x)))
		case string:
			d.byte('t')
			d.str([]byte(x))
		case []byte:
			d.byte('b')
			d.str(x)
		default:
			if d.err == nil {
				d.err = fmt.Errorf("store: dump: a %T is not a canonical value", v)
			}
		}
	}
}

func (d *dumpWriter) end(dg tableDigest) {
	d.byte('E')
	d.uvarint(uint64(dg.rows))
	d.bytes(dg.sum[:])
}

func (d *dumpWriter) finish() error {
	d.byte('Z')
	if d.err == nil {
		d.err = d.w.Flush()
	}
	return d.err
}

// DumpTable is one table as a dump stream holds it.
type DumpTable struct {
	Table    string `json:"table"`
	Rows     int64  `json:"rows"`
	Checksum string `json:"checksum"`
}

// dumpedTable is the table a dumpReader is in.
type dumpedTable struct {
	name  string
	plan  int // index in copyPlan
	cols  []string
	kinds []valueKind
	d     tableDigest
}

// dumpReader decodes a dump stream. It checks everything the stream says
// about itself (layout, bounds, kinds, plan order, per-table counts and
// checksums); whether the tables fit a database is the restore's check.
type dumpReader struct {
	r             *bufio.Reader
	schemaVersion int
	cur           *dumpedTable
	lastPlan      int
	done          bool
	tables        []DumpTable
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrDumpCorrupt, fmt.Sprintf(format, args...))
}

// eofCorrupt turns a premature end of the stream into ErrDumpCorrupt.
func eofCorrupt(err error, where string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt("the stream ends inside %s", where)
	}
	return err
}

func newDumpReader(r io.Reader) (*dumpReader, error) {
	d := &dumpReader{r: bufio.NewReaderSize(r, dumpBufferSize), lastPlan: -1}
	magic := make([]byte, len(dumpMagic))
	if _, err := io.ReadFull(d.r, magic); err != nil {
		return nil, eofCorrupt(err, "the header")
	}
	if string(magic) != dumpMagic {
		return nil, corrupt("it does not start with the dump magic")
	}
	v, err := d.uvarint("the header")
	if err != nil {
		return nil, err
	}
	if v != dumpVersion {
		return nil, corrupt("dump version %d, this build reads %d", v, dumpVersion)
	}
	sv, err := d.uvarint("the header")
	if err != nil {
		return nil, err
	}
	if sv == 0 || sv > 1<<20 {
		return nil, corrupt("schema version %d is impossible", sv)
	}
	d.schemaVersion = int(sv)
	return d, nil
}

func (d *dumpReader) uvarint(where string) (uint64, error) {
	v, err := binary.ReadUvarint(d.r)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, corrupt("the stream ends inside %s", where)
		}
		return 0, corrupt("%s: %v", where, err)
	}
	return v, nil
}

func (d *dumpReader) str(limit int, where string) ([]byte, error) {
	n, err := d.uvarint(where)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, corrupt("%s: length %d is over the limit %d", where, n, limit)
	}
	// Read in steps, so a forged length cannot allocate more than the
	// stream actually holds.
	var b bytes.Buffer
	if _, err := io.CopyN(&b, d.r, int64(n)); err != nil {
		return nil, eofCorrupt(err, where)
	}
	return b.Bytes(), nil
}

// nextTable moves to the next table; nil at the end of the stream. The
// previous table must have been read to its end.
func (d *dumpReader) nextTable() (*dumpedTable, error) {
	if d.cur != nil {
		return nil, fmt.Errorf("store: dump: table %s was not read to its end", d.cur.name)
	}
	if d.done {
		return nil, nil
	}
	tag, err := d.r.ReadByte()
	if err != nil {
		return nil, eofCorrupt(err, "the table list")
	}
	switch tag {
	case 'Z':
		if _, err := d.r.ReadByte(); err == nil {
			return nil, corrupt("bytes follow the end of the stream")
		} else if !errors.Is(err, io.EOF) {
			return nil, err
		}
		d.done = true
		return nil, nil
	case 'T':
	default:
		return nil, corrupt("record type %q where a table or the end is expected", tag)
	}
	name, err := d.str(maxDumpName, "a table name")
	if err != nil {
		return nil, err
	}
	idx := slices.IndexFunc(copyPlan, func(c copyTable) bool { return c.name == string(name) })
	if idx < 0 {
		return nil, fmt.Errorf("%w: the backup holds table %q, which this qpcctl does not know; use the qpcctl of the release that took the backup", ErrUnknownTable, name)
	}
	if idx <= d.lastPlan || copyPlan[idx].mode == copySkip {
		return nil, corrupt("table %s out of order or not one a backup holds", name)
	}
	d.lastPlan = idx
	ncols, err := d.uvarint("a column count")
	if err != nil {
		return nil, err
	}
	if ncols == 0 || ncols > maxDumpCols {
		return nil, corrupt("table %s has %d columns", name, ncols)
	}
	t := &dumpedTable{name: string(name), plan: idx}
	for range ncols {
		c, err := d.str(maxDumpName, "a column name")
		if err != nil {
			return nil, err
		}
		k, err := d.r.ReadByte()
		if err != nil {
			return nil, eofCorrupt(err, "a column")
		}
		switch valueKind(k) {
		case kindInt, kindText, kindBytes:
		default:
			return nil, corrupt("column %s.%s has kind %q", name, c, k)
		}
		if n := len(t.cols); n > 0 && t.cols[n-1] >= string(c) && copyPlan[idx].cols == nil {
			return nil, corrupt("columns of %s are not sorted and unique", name)
		}
		t.cols = append(t.cols, string(c))
		t.kinds = append(t.kinds, valueKind(k))
	}
	if fixed := copyPlan[idx].cols; fixed != nil && !slices.Equal(fixed, t.cols) {
		return nil, corrupt("table %s has columns %v, a backup holds %v", name, t.cols, fixed)
	}
	d.cur = t
	return t, nil
}

// nextRow returns the current table's next row (canonical values), or nil
// at its end, after checking the table's count and checksum.
func (d *dumpReader) nextRow() ([]any, error) {
	t := d.cur
	if t == nil {
		return nil, errors.New("store: dump: no table to read rows from")
	}
	tag, err := d.r.ReadByte()
	if err != nil {
		return nil, eofCorrupt(err, "table "+t.name)
	}
	switch tag {
	case 'E':
		n, err := d.uvarint("the end of table " + t.name)
		if err != nil {
			return nil, err
		}
		var sum [32]byte
		if _, err := io.ReadFull(d.r, sum[:]); err != nil {
			return nil, eofCorrupt(err, "the end of table "+t.name)
		}
		if n != uint64(t.d.rows) || sum != t.d.sum {
			return nil, corrupt("table %s: the stream holds %d rows (checksum %s), its end record says %d (checksum %x)", t.name, t.d.rows, t.d.hex(), n, sum)
		}
		d.tables = append(d.tables, DumpTable{Table: t.name, Rows: t.d.rows, Checksum: t.d.hex()})
		d.cur = nil
		return nil, nil
	case 'R':
	default:
		return nil, corrupt("record type %q inside table %s", tag, t.name)
	}
	vals := make([]any, len(t.cols))
	var n [8]byte
	for i, k := range t.kinds {
		vt, err := d.r.ReadByte()
		if err != nil {
			return nil, eofCorrupt(err, "a row of "+t.name)
		}
		switch {
		case vt == 'n':
			vals[i] = nil
		case vt == 'i' && k == kindInt:
			if _, err := io.ReadFull(d.r, n[:]); err != nil {
				return nil, eofCorrupt(err, "a row of "+t.name)
			}
			vals[i] = int64(binary.BigEndian.Uint64(n[:]))
		case vt == 't' && k == kindText:
			b, err := d.str(maxDumpValue, "a value of "+t.name)
			if err != nil {
				return nil, err
			}
			// The same rule as the copy's: text PostgreSQL can store.
			v, err := canonical(string(b), kindText)
			if err != nil {
				return nil, corrupt("%s.%s: %v", t.name, t.cols[i], err)
			}
			vals[i] = v
		case vt == 'b' && k == kindBytes:
			b, err := d.str(maxDumpValue, "a value of "+t.name)
			if err != nil {
				return nil, err
			}
			vals[i] = b
		default:
			return nil, corrupt("%s.%s: value type %q in a column of kind %q", t.name, t.cols[i], vt, byte(k))
		}
	}
	t.d.add(t.cols, vals)
	return vals, nil
}

// DumpSummary is what a whole dump stream holds.
type DumpSummary struct {
	SchemaVersion int         `json:"schema_version"`
	Tables        []DumpTable `json:"tables"`
}

// ReadDump decodes a whole dump stream and checks it (layout, bounds,
// kinds, table order, every table's count and checksum). It does not need
// a database. Errors: ErrDumpCorrupt, ErrUnknownTable.
func ReadDump(r io.Reader) (DumpSummary, error) {
	d, err := newDumpReader(r)
	if err != nil {
		return DumpSummary{}, err
	}
	for {
		t, err := d.nextTable()
		if err != nil {
			return DumpSummary{}, err
		}
		if t == nil {
			break
		}
		for {
			row, err := d.nextRow()
			if err != nil {
				return DumpSummary{}, err
			}
			if row == nil {
				break
			}
		}
	}
	return DumpSummary{SchemaVersion: d.schemaVersion, Tables: d.tables}, nil
}
