package rdma

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"reflect"
	"testing"
)

// The test vectors of shm-layout (the one source of truth; a Rust test fails
// when the file is stale). Every struct, offset, constant, geometry and
// sample entry there is checked against this package's own encoding.

type vectors struct {
	Constants struct {
		Backing      map[string]uint32 `json:"backing"`
		CQFlags      map[string]uint32 `json:"cq_flags"`
		SQFlags      map[string]uint32 `json:"sq_flags"`
		CqeFlags     map[string]uint32 `json:"cqe_flags"`
		EngineState  map[string]uint32 `json:"engine_state"`
		RegionState  map[string]uint32 `json:"region_state"`
		FenceReason  map[string]uint32 `json:"fence_reason"`
		Opcode       map[string]uint8  `json:"opcode"`
		HugePage     uint64            `json:"huge_page_size_bytes"`
		Page         uint64            `json:"page_size_bytes"`
		Version      uint32            `json:"layout_version"`
		Magic        uint64            `json:"magic"`
		MaxBufferLen uint32            `json:"max_buffer_length_bytes"`
		ErrorCodes   []struct {
			Name    string `json:"name"`
			Value   int32  `json:"value"`
			Meaning string `json:"meaning"`
		} `json:"error_codes"`
	} `json:"constants"`
	Structs map[string]struct {
		Size   int `json:"size_bytes"`
		Fields []struct {
			Name   string `json:"name"`
			Offset int    `json:"offset"`
			Type   string `json:"type"`
		} `json:"fields"`
	} `json:"structs"`
	Geometries []struct {
		Input struct {
			QueuePairs  uint32 `json:"queue_pairs"`
			SQEntries   uint32 `json:"sq_entries"`
			BufferBytes uint64 `json:"buffer_size_bytes"`
		} `json:"input"`
		BufferOffset     uint64 `json:"buffer_offset"`
		CQEntries        uint32 `json:"cq_entries"`
		DescriptionHex   string `json:"description_bytes_hex"`
		Stride           uint32 `json:"queue_pair_stride_bytes"`
		RegionSize       uint64 `json:"region_size_bytes"`
		StatsOffset      uint64 `json:"stats_offset"`
		StatsSize        uint64 `json:"stats_size_bytes"`
		QueuePairOffsets []struct {
			CQ      uint64 `json:"cq_offset"`
			Control uint64 `json:"queue_control_offset"`
			SQ      uint64 `json:"sq_offset"`
			Stats   uint64 `json:"stats_offset"`
		} `json:"queue_pairs"`
	} `json:"geometries"`
	Entries []struct {
		Name   string `json:"name"`
		SqeHex string `json:"sqe_hex"`
		CqeHex string `json:"cqe_hex"`
	} `json:"entries"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile("../../shm-layout/test-vectors/layout.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	decoder := json.NewDecoder(bytes.NewReader(raw))
	if err := decoder.Decode(&v); err != nil {
		t.Fatalf("layout.json does not decode: %v", err)
	}
	return v
}

func expectMap[V comparable](t *testing.T, what string, found, expected map[string]V) {
	t.Helper()
	if !reflect.DeepEqual(found, expected) {
		t.Errorf("%s: layout.json says %v, this package has %v", what, found, expected)
	}
}

func TestConstantsMatchTheVectors(t *testing.T) {
	c := loadVectors(t).Constants
	expectMap(t, "backing", c.Backing, map[string]uint32{"HUGETLB": BackingHugeTLB, "NORMAL_PAGES": BackingNormalPages})
	expectMap(t, "cq_flags", c.CQFlags, map[string]uint32{"NEED_WAKEUP": NeedWakeup})
	expectMap(t, "sq_flags", c.SQFlags, map[string]uint32{"NEED_WAKEUP": NeedWakeup})
	expectMap(t, "cqe_flags", c.CqeFlags, map[string]uint32{
		"SOURCE_MASK": SourceMask, "SOURCE_NONE": SourceNone, "SOURCE_LOCAL": SourceLocal,
		"SOURCE_RDMA": SourceRDMA, "SOURCE_HTTP": SourceHTTP, "SOURCE_STREAM": SourceStream, "NEEDLE_GZIPPED": NeedleGzipped,
	})
	expectMap(t, "engine_state", c.EngineState, map[string]uint32{"RUNNING": EngineRunning, "DRAINING": EngineDraining, "STOPPED": EngineStopped})
	expectMap(t, "region_state", c.RegionState, map[string]uint32{"ACTIVE": RegionActive, "FENCED": RegionFenced})
	expectMap(t, "fence_reason", c.FenceReason, map[string]uint32{"NONE": FenceNone, "SQ_TAIL_INVALID": FenceSQTailInvalid, "CQ_HEAD_INVALID": FenceCQHeadInvalid, "PAGES_LOST": FencePagesLost})
	expectMap(t, "opcode", c.Opcode, map[string]uint8{"NOP": OpNop, "READ_NEEDLE": OpReadNeedle, "READ_RANGE": OpReadRange, "CANCEL": OpCancel})
	for _, check := range []struct {
		name            string
		found, expected uint64
	}{
		{"huge_page_size_bytes", c.HugePage, HugePageSizeBytes},
		{"page_size_bytes", c.Page, PageSizeBytes},
		{"layout_version", uint64(c.Version), uint64(LayoutVersion)},
		{"magic", c.Magic, RegionMagic},
		{"max_buffer_length_bytes", uint64(c.MaxBufferLen), uint64(MaxBufferLengthBytes)},
	} {
		if check.found != check.expected {
			t.Errorf("%s: layout.json says %d, this package has %d", check.name, check.found, check.expected)
		}
	}
	codes := AllCodes()
	if len(c.ErrorCodes) != len(codes) {
		t.Fatalf("layout.json has %d error codes, this package %d", len(c.ErrorCodes), len(codes))
	}
	for i, entry := range c.ErrorCodes {
		code := codes[i]
		if int32(code) != entry.Value || code.Name() != entry.Name || code.Meaning() != entry.Meaning {
			t.Errorf("error code %d: layout.json says %d %s %q, this package %d %s %q",
				i, entry.Value, entry.Name, entry.Meaning, int32(code), code.Name(), code.Meaning())
		}
	}
	named := map[string]Code{
		"NO_SUCH_VOLUME": CodeNoSuchVolume, "NO_SUCH_NEEDLE": CodeNoSuchNeedle, "DELETED": CodeDeleted,
		"COOKIE_MISMATCH": CodeCookieMismatch, "CRC_MISMATCH": CodeCRCMismatch, "BUFFER_TOO_SMALL": CodeBufferTooSmall,
		"RANGE_OUT_OF_BOUNDS": CodeRangeOutOfBounds, "BAD_LENGTH": CodeBadLength, "HTTP_FAILED": CodeHTTPFailed,
	}
	for name, code := range named {
		if code.Name() != name {
			t.Errorf("constant for %s is %d, which the table names %s", name, int32(code), code.Name())
		}
	}
}

// fieldBytes sets one field of a zero value to all ones (by name, through
// reflection), encodes it and returns which bytes came out non-zero: the
// encoder's own offset and width of that field.
func fieldBytes(t *testing.T, zero any, field string, encode func(any) []byte) (offset, width int) {
	t.Helper()
	value := reflect.New(reflect.TypeOf(zero)).Elem()
	f := value.FieldByName(field)
	if !f.IsValid() {
		t.Fatalf("%T has no field %s", zero, field)
	}
	switch f.Kind() {
	case reflect.Int32:
		f.SetInt(-1)
	default:
		f.SetUint(^uint64(0) >> (64 - 8*f.Type().Size()))
	}
	encoded := encode(value.Interface())
	offset, width = -1, 0
	for i, b := range encoded {
		if b != 0 {
			if offset < 0 {
				offset = i
			}
			width = i - offset + 1
		}
	}
	return offset, width
}

var typeWidths = map[string]int{"u8": 1, "u16": 2, "u32": 4, "i32": 4, "u64": 8, "atomic u32": 4, "atomic u64": 8}

// goFieldName is a layout.json field name as this package spells it.
var goFieldName = map[string]string{
	"_reserved": "Reserved", "user_data": "UserData", "volume_id": "VolumeID", "needle_id": "NeedleID",
	"buffer_length": "BufferLength", "buffer_offset": "BufferOffset", "range_offset": "RangeOffset",
	"range_length": "RangeLength", "deadline_ns": "DeadlineNs", "data_offset": "DataOffset",
	"layout_version": "LayoutVersion", "header_size_bytes": "HeaderSizeBytes", "region_size_bytes": "RegionSizeBytes",
	"queue_pair_count": "QueuePairCount", "sq_entries": "SQEntries", "cq_entries": "CQEntries",
	"queue_pair_stride_bytes": "QueuePairStrideBytes", "queue_pairs_offset": "QueuePairsOffset",
	"stats_offset": "StatsOffset", "stats_size_bytes": "StatsSizeBytes", "buffer_size_bytes": "BufferSizeBytes",
	"engine_generation": "EngineGeneration", "region_id": "RegionID", "engine_pid": "EnginePID",
	"client_pid": "ClientPID", "page_size_bytes": "PageSizeBytes",
}

func goName(name string) string {
	if mapped, ok := goFieldName[name]; ok {
		return mapped
	}
	return string(name[0]-'a'+'A') + name[1:]
}

func TestStructsMatchTheVectors(t *testing.T) {
	structs := loadVectors(t).Structs
	encoders := map[string]struct {
		zero   any
		size   int
		encode func(any) []byte
	}{
		"Sqe": {Sqe{}, SqeSizeBytes, func(v any) []byte { b := make([]byte, SqeSizeBytes); s := v.(Sqe); s.Encode(b); return b }},
		"Cqe": {Cqe{}, CqeSizeBytes, func(v any) []byte { b := make([]byte, CqeSizeBytes); c := v.(Cqe); c.Encode(b); return b }},
		"RegionDescription": {RegionDescription{}, RegionDescriptionSizeBytes, func(v any) []byte {
			b := make([]byte, RegionDescriptionSizeBytes)
			d := v.(RegionDescription)
			d.Encode(b)
			if DecodeRegionDescription(b) != d {
				t.Errorf("RegionDescription does not survive encode and decode: %+v", d)
			}
			return b
		}},
	}
	for name, encoder := range encoders {
		layout, ok := structs[name]
		if !ok || layout.Size != encoder.size {
			t.Errorf("%s: layout.json size %d, this package %d", name, layout.Size, encoder.size)
		}
		if reflect.TypeOf(encoder.zero).NumField() != len(layout.Fields) {
			t.Errorf("%s: layout.json lists %d fields, this package has %d", name, len(layout.Fields), reflect.TypeOf(encoder.zero).NumField())
		}
		for _, field := range layout.Fields {
			offset, width := fieldBytes(t, encoder.zero, goName(field.Name), encoder.encode)
			if offset != field.Offset || width != typeWidths[field.Type] {
				t.Errorf("%s.%s: layout.json says offset %d (%s), the encoder writes %d bytes at %d",
					name, field.Name, field.Offset, field.Type, width, offset)
			}
		}
	}
	// Cqe decoding is the inverse of its encoding, field by field.
	for _, field := range structs["Cqe"].Fields {
		value := reflect.New(reflect.TypeOf(Cqe{})).Elem()
		f := value.FieldByName(goName(field.Name))
		if f.Kind() == reflect.Int32 {
			f.SetInt(-14)
		} else {
			f.SetUint(0x8070605040302010 >> (64 - 8*f.Type().Size()))
		}
		cqe := value.Interface().(Cqe)
		b := make([]byte, CqeSizeBytes)
		cqe.Encode(b)
		if DecodeCqe(b) != cqe {
			t.Errorf("Cqe.%s does not survive encode and decode", field.Name)
		}
	}
	words := map[string]map[string]int{
		"QueueControl": {"sq_tail": offsetSQTail, "sq_head": offsetSQHead, "sq_flags": offsetSQFlags,
			"cq_tail": offsetCQTail, "cq_head": offsetCQHead, "cq_flags": offsetCQFlags},
		"HeaderLive": {"engine_state": offsetEngState - HeaderLiveOffset, "region_state": offsetRegState - HeaderLiveOffset,
			"fence_reason": offsetFence - HeaderLiveOffset, "heartbeat_ns": offsetBeat - HeaderLiveOffset},
		"QueuePairStats": {},
		"RegionHeader":   {"description": 0, "live": HeaderLiveOffset},
	}
	statsNames := []string{"sqes_taken", "cqes_posted", "errors", "invalid_entries", "bytes_read", "sleeps", "client_wakeups", "in_flight"}
	for i, name := range statsNames {
		words["QueuePairStats"][name] = int(statsFieldOffsets[i])
	}
	sizes := map[string]int{"QueueControl": QueueControlSizeBytes, "HeaderLive": HeaderLiveSizeBytes,
		"QueuePairStats": QueuePairStatsSizeBytes, "RegionHeader": RegionHeaderSizeBytes}
	for name, offsets := range words {
		layout := structs[name]
		if layout.Size != sizes[name] {
			t.Errorf("%s: layout.json size %d, this package %d", name, layout.Size, sizes[name])
		}
		if len(layout.Fields) != len(offsets) {
			t.Errorf("%s: layout.json lists %d fields, this package knows %d", name, len(layout.Fields), len(offsets))
		}
		for _, field := range layout.Fields {
			if offset, ok := offsets[field.Name]; !ok || offset != field.Offset {
				t.Errorf("%s.%s: layout.json says offset %d, this package %d (known: %v)", name, field.Name, field.Offset, offset, ok)
			}
		}
	}
	if len(structs) != len(encoders)+len(words) {
		t.Errorf("layout.json describes %d structs, this test checks %d", len(structs), len(encoders)+len(words))
	}
}

func TestGeometriesMatchTheVectors(t *testing.T) {
	for _, expected := range loadVectors(t).Geometries {
		in := expected.Input
		g, err := NewGeometry(in.QueuePairs, in.SQEntries, in.BufferBytes)
		if err != nil {
			t.Fatalf("%+v: %v", in, err)
		}
		found := []uint64{g.BufferOffset, uint64(g.CQEntries()), uint64(g.QueuePairStrideBytes), g.RegionSizeBytes, g.StatsOffset, g.StatsSizeBytes}
		want := []uint64{expected.BufferOffset, uint64(expected.CQEntries), uint64(expected.Stride), expected.RegionSize, expected.StatsOffset, expected.StatsSize}
		if !reflect.DeepEqual(found, want) {
			t.Errorf("%+v: geometry %v, layout.json %v", in, found, want)
		}
		if len(expected.QueuePairOffsets) != int(in.QueuePairs) {
			t.Errorf("%+v: layout.json lists %d queue pairs", in, len(expected.QueuePairOffsets))
		}
		for i, qp := range expected.QueuePairOffsets {
			index := uint32(i)
			found := []uint64{g.QueueControlOffset(index), g.SQOffset(index), g.CQOffset(index), g.StatsEntryOffset(index)}
			want := []uint64{qp.Control, qp.SQ, qp.CQ, qp.Stats}
			if !reflect.DeepEqual(found, want) {
				t.Errorf("%+v queue pair %d: offsets %v, layout.json %v", in, i, found, want)
			}
		}
		description := NewRegionDescription(g)
		encoded := make([]byte, RegionDescriptionSizeBytes)
		description.Encode(encoded)
		if got := hex.EncodeToString(encoded); got != expected.DescriptionHex {
			t.Errorf("%+v: description bytes\n%s, layout.json\n%s", in, got, expected.DescriptionHex)
		}
		raw, _ := hex.DecodeString(expected.DescriptionHex)
		decoded := DecodeRegionDescription(raw)
		if validated, err := decoded.Validate(g.RegionSizeBytes); err != nil || validated != g {
			t.Errorf("%+v: the vector's description validates to %+v, %v", in, validated, err)
		}
		tampered := decoded
		tampered.BufferOffset = 0
		if _, err := tampered.Validate(g.RegionSizeBytes); err == nil {
			t.Errorf("%+v: a tampered buffer_offset validates", in)
		}
		tampered = decoded
		tampered.LayoutVersion = 99
		if _, err := tampered.Validate(g.RegionSizeBytes); err == nil {
			t.Errorf("%+v: layout version 99 validates", in)
		}
		if _, err := decoded.Validate(g.RegionSizeBytes - 1); err == nil {
			t.Errorf("%+v: a mapping one byte short validates", in)
		}
	}
}

func TestSampleEntriesMatchTheVectors(t *testing.T) {
	// The values shm-layout/tests/test_vectors.rs encodes.
	sqes := map[string]Sqe{
		"nop":    {Opcode: OpNop, UserData: 42},
		"cancel": {Opcode: OpCancel, UserData: 43, NeedleID: 42},
		"read_range_3,01637037d6": {Opcode: OpReadRange, VolumeID: 3, UserData: 0x0102030405060708, NeedleID: 0x01,
			Cookie: 0x637037d6, BufferLength: 65536, BufferOffset: 4096, RangeOffset: 100, RangeLength: 200, DeadlineNs: 1_000_000_000},
	}
	cqes := map[string]Cqe{
		"completion_rdma_gzipped":     {UserData: 0x0102030405060708, Result: 200, Flags: SourceRDMA | NeedleGzipped, DataOffset: 4096},
		"completion_buffer_too_small": {UserData: 9, Result: int32(CodeBufferTooSmall), Aux: 70_000},
	}
	entries := loadVectors(t).Entries
	if len(entries) != len(sqes)+len(cqes) {
		t.Errorf("layout.json has %d sample entries, this test knows %d", len(entries), len(sqes)+len(cqes))
	}
	for _, entry := range entries {
		switch {
		case entry.SqeHex != "":
			sqe, ok := sqes[entry.Name]
			if !ok {
				t.Errorf("sample SQE %s is not known here", entry.Name)
				continue
			}
			b := make([]byte, SqeSizeBytes)
			sqe.Encode(b)
			if got := hex.EncodeToString(b); got != entry.SqeHex {
				t.Errorf("%s: encoded\n%s, layout.json\n%s", entry.Name, got, entry.SqeHex)
			}
		default:
			cqe, ok := cqes[entry.Name]
			if !ok {
				t.Errorf("sample CQE %s is not known here", entry.Name)
				continue
			}
			raw, _ := hex.DecodeString(entry.CqeHex)
			if decoded := DecodeCqe(raw); decoded != cqe {
				t.Errorf("%s: decoded %+v, expected %+v", entry.Name, decoded, cqe)
			}
			b := make([]byte, CqeSizeBytes)
			cqe.Encode(b)
			if !bytes.Equal(b, raw) {
				t.Errorf("%s: encoded %x, layout.json %s", entry.Name, b, entry.CqeHex)
			}
		}
	}
	// The file id in the sample's name is the entry's needle.
	id, err := ParseFileID("3,01637037d6")
	if err != nil || id != (FileID{VolumeID: 3, NeedleID: 1, Cookie: 0x637037d6}) || id.String() != "3,01637037d6" {
		t.Errorf("3,01637037d6 parses to %+v, %v", id, err)
	}
	completion := Completion{Cqe: cqes["completion_buffer_too_small"]}
	var completionError *CompletionError
	if err := completion.Err(); !asCompletion(err, &completionError) || completionError.Name != "BUFFER_TOO_SMALL" || completionError.NeededBytes != 70_000 {
		t.Errorf("BUFFER_TOO_SMALL completion gives %v", err)
	}
}

func asCompletion(err error, target **CompletionError) bool {
	e, ok := err.(*CompletionError)
	*target = e
	return ok
}

func TestMalformedFileIDsAreClearErrors(t *testing.T) {
	for _, fid := range []string{"", "3", ",01637037d6", "x,01637037d6", "3,637037d6", "3,zz637037d6", "3,01zz7037d6",
		"3,0123456789abcdef0123456789", "99999999999,01637037d6", "3,01637037d6_x"} {
		if _, err := ParseFileID(fid); err == nil {
			t.Errorf("%q parses", fid)
		}
	}
	for fid, want := range map[string]FileID{
		"3,01637037d6":       {3, 1, 0x637037d6},
		"3,01637037d6.jpg":   {3, 1, 0x637037d6},
		"3,01637037d6_2":     {3, 3, 0x637037d6},
		"7,ABCDEF0012345678": {7, 0xabcdef00, 0x12345678},
	} {
		if got, err := ParseFileID(fid); err != nil || got != want {
			t.Errorf("%q parses to %+v, %v; want %+v", fid, got, err, want)
		}
	}
}
