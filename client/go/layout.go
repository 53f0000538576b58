package rdma

import (
	"encoding/binary"
	"fmt"
)

// The byte layout of a shared region, as shm-layout/src defines it (the one
// source of truth; shm-layout/test-vectors/layout.json describes it and the
// tests of this package check every number below against that file). All
// integers are little-endian in shared memory.

const (
	// LayoutVersion is the layout version this package speaks.
	LayoutVersion uint32 = 1
	// RegionMagic is b"SWRDMAR1" read as a little-endian u64.
	RegionMagic uint64 = 0x3152414d44525753
	// PageSizeBytes is the alignment of every region part.
	PageSizeBytes uint64 = 4096
	// HugePageSizeBytes is the unit of a region's total size.
	HugePageSizeBytes uint64 = 2 << 20
	// MaxBufferLengthBytes is the largest buffer one entry may name.
	MaxBufferLengthBytes uint32 = 1 << 30

	// MaxQueuePairs, MinSQEntries, MaxSQEntries and MaxBufferSizeBytes are
	// the hard limits of this layout version.
	MaxQueuePairs      uint32 = 64
	MinSQEntries       uint32 = 2
	MaxSQEntries       uint32 = 4096
	MaxBufferSizeBytes uint64 = 64 << 30
	// CQEntriesPerSQEntry: the CQ holds this many times the SQ's entries.
	CQEntriesPerSQEntry uint32 = 2
)

// Operation codes (Sqe.Opcode).
const (
	OpNop        uint8 = 1
	OpReadNeedle uint8 = 2
	OpReadRange  uint8 = 3
	OpCancel     uint8 = 4
)

// Bits of Cqe.Flags.
const (
	SourceMask    uint32 = 0b111
	SourceNone    uint32 = 0
	SourceLocal   uint32 = 1
	SourceRDMA    uint32 = 2
	SourceHTTP    uint32 = 3
	SourceStream  uint32 = 4
	NeedleGzipped uint32 = 1 << 8
)

// NeedWakeup is the bit of sq_flags (the engine sleeps) and cq_flags (the
// client sleeps) of the wake-up protocol.
const NeedWakeup uint32 = 1

// Values of the header's live words.
const (
	EngineRunning  uint32 = 1
	EngineDraining uint32 = 2
	EngineStopped  uint32 = 3

	RegionActive uint32 = 1
	RegionFenced uint32 = 2

	FenceNone          uint32 = 0
	FenceSQTailInvalid uint32 = 1
	FenceCQHeadInvalid uint32 = 2
	FencePagesLost     uint32 = 3

	BackingHugeTLB     uint32 = 1
	BackingNormalPages uint32 = 2
)

// Struct sizes and the offsets this package reads and writes.
const (
	SqeSizeBytes               = 64
	CqeSizeBytes               = 32
	RegionDescriptionSizeBytes = 128
	HeaderLiveOffset           = 128
	HeaderLiveSizeBytes        = 128
	RegionHeaderSizeBytes      = 4096
	QueueControlSizeBytes      = 768
	QueuePairStatsSizeBytes    = 128
	// IndexSpacingBytes separates the six words of a queue pair's control block.
	IndexSpacingBytes = 128

	offsetSQTail   = 0 * IndexSpacingBytes
	offsetSQHead   = 1 * IndexSpacingBytes
	offsetSQFlags  = 2 * IndexSpacingBytes
	offsetCQTail   = 3 * IndexSpacingBytes
	offsetCQHead   = 4 * IndexSpacingBytes
	offsetCQFlags  = 5 * IndexSpacingBytes
	offsetEngState = HeaderLiveOffset + 0
	offsetRegState = HeaderLiveOffset + 4
	offsetFence    = HeaderLiveOffset + 8
	offsetBeat     = HeaderLiveOffset + 16
)

// Sqe is one submission queue entry (64 bytes, written by the client).
type Sqe struct {
	Opcode       uint8
	Flags        uint8
	Reserved     uint16
	VolumeID     uint32
	UserData     uint64
	NeedleID     uint64
	Cookie       uint32
	BufferLength uint32
	BufferOffset uint64
	RangeOffset  uint64
	RangeLength  uint64
	DeadlineNs   uint64
}

// Encode writes the entry's 64 bytes into b.
func (s *Sqe) Encode(b []byte) {
	_ = b[SqeSizeBytes-1]
	b[0] = s.Opcode
	b[1] = s.Flags
	binary.LittleEndian.PutUint16(b[2:], s.Reserved)
	binary.LittleEndian.PutUint32(b[4:], s.VolumeID)
	binary.LittleEndian.PutUint64(b[8:], s.UserData)
	binary.LittleEndian.PutUint64(b[16:], s.NeedleID)
	binary.LittleEndian.PutUint32(b[24:], s.Cookie)
	binary.LittleEndian.PutUint32(b[28:], s.BufferLength)
	binary.LittleEndian.PutUint64(b[32:], s.BufferOffset)
	binary.LittleEndian.PutUint64(b[40:], s.RangeOffset)
	binary.LittleEndian.PutUint64(b[48:], s.RangeLength)
	binary.LittleEndian.PutUint64(b[56:], s.DeadlineNs)
}

// Cqe is one completion queue entry (32 bytes, written by the engine).
type Cqe struct {
	// UserData is the submission's, unchanged.
	UserData uint64
	// Result is a byte count (>= 0) or a negative error code.
	Result int32
	// Flags holds the Source* bits and NeedleGzipped.
	Flags uint32
	// DataOffset is where a successful read's data begins, from the start
	// of the buffer area.
	DataOffset uint64
	// Aux is the buffer length needed, for BUFFER_TOO_SMALL.
	Aux uint64
}

// DecodeCqe copies a completion out of its 32 bytes.
func DecodeCqe(b []byte) Cqe {
	_ = b[CqeSizeBytes-1]
	return Cqe{
		UserData:   binary.LittleEndian.Uint64(b[0:]),
		Result:     int32(binary.LittleEndian.Uint32(b[8:])),
		Flags:      binary.LittleEndian.Uint32(b[12:]),
		DataOffset: binary.LittleEndian.Uint64(b[16:]),
		Aux:        binary.LittleEndian.Uint64(b[24:]),
	}
}

// Encode writes the completion's 32 bytes into b (for tests and tools).
func (c *Cqe) Encode(b []byte) {
	_ = b[CqeSizeBytes-1]
	binary.LittleEndian.PutUint64(b[0:], c.UserData)
	binary.LittleEndian.PutUint32(b[8:], uint32(c.Result))
	binary.LittleEndian.PutUint32(b[12:], c.Flags)
	binary.LittleEndian.PutUint64(b[16:], c.DataOffset)
	binary.LittleEndian.PutUint64(b[24:], c.Aux)
}

// Geometry is where every part of a region lives, computed from the queue
// pair count, the SQ entries and the buffer area size, as the engine does.
type Geometry struct {
	QueuePairCount       uint32
	SQEntries            uint32
	QueuePairStrideBytes uint32
	QueuePairsOffset     uint64
	StatsOffset          uint64
	StatsSizeBytes       uint64
	BufferOffset         uint64
	BufferSizeBytes      uint64
	RegionSizeBytes      uint64
}

func roundUp(value, multiple uint64) uint64 {
	return (value + multiple - 1) / multiple * multiple
}

// NewGeometry computes the geometry for these counts, or says why there is none.
func NewGeometry(queuePairs, sqEntries uint32, bufferSizeBytes uint64) (Geometry, error) {
	if queuePairs == 0 || queuePairs > MaxQueuePairs {
		return Geometry{}, fmt.Errorf("queue pair count %d is not between 1 and %d", queuePairs, MaxQueuePairs)
	}
	if sqEntries&(sqEntries-1) != 0 || sqEntries < MinSQEntries || sqEntries > MaxSQEntries {
		return Geometry{}, fmt.Errorf("SQ entries %d is not a power of two between %d and %d", sqEntries, MinSQEntries, MaxSQEntries)
	}
	if bufferSizeBytes == 0 || bufferSizeBytes%PageSizeBytes != 0 || bufferSizeBytes > MaxBufferSizeBytes {
		return Geometry{}, fmt.Errorf("buffer area size %d is not a non-zero multiple of %d of at most %d", bufferSizeBytes, PageSizeBytes, MaxBufferSizeBytes)
	}
	queuePairBytes := uint64(QueueControlSizeBytes) + uint64(sqEntries)*SqeSizeBytes + uint64(sqEntries*CQEntriesPerSQEntry)*CqeSizeBytes
	stride := roundUp(queuePairBytes, PageSizeBytes)
	g := Geometry{QueuePairCount: queuePairs, SQEntries: sqEntries, QueuePairStrideBytes: uint32(stride)}
	g.QueuePairsOffset = PageSizeBytes
	g.StatsOffset = g.QueuePairsOffset + stride*uint64(queuePairs)
	g.StatsSizeBytes = roundUp(QueuePairStatsSizeBytes*uint64(queuePairs), PageSizeBytes)
	g.BufferOffset = g.StatsOffset + g.StatsSizeBytes
	g.BufferSizeBytes = bufferSizeBytes
	g.RegionSizeBytes = roundUp(g.BufferOffset+bufferSizeBytes, HugePageSizeBytes)
	return g, nil
}

// CQEntries is the CQ's size: twice the SQ's.
func (g Geometry) CQEntries() uint32 { return g.SQEntries * CQEntriesPerSQEntry }

// QueueControlOffset is the offset of queue pair index's control block.
func (g Geometry) QueueControlOffset(index uint32) uint64 {
	return g.QueuePairsOffset + uint64(g.QueuePairStrideBytes)*uint64(index)
}

// SQOffset is the offset of queue pair index's first SQ entry.
func (g Geometry) SQOffset(index uint32) uint64 {
	return g.QueueControlOffset(index) + QueueControlSizeBytes
}

// CQOffset is the offset of queue pair index's first CQ entry.
func (g Geometry) CQOffset(index uint32) uint64 {
	return g.SQOffset(index) + uint64(g.SQEntries)*SqeSizeBytes
}

// StatsEntryOffset is the offset of queue pair index's stats block.
func (g Geometry) StatsEntryOffset(index uint32) uint64 {
	return g.StatsOffset + QueuePairStatsSizeBytes*uint64(index)
}

// RegionDescription is the write-once first 128 bytes of a region.
type RegionDescription struct {
	Magic                uint64
	LayoutVersion        uint32
	HeaderSizeBytes      uint32
	RegionSizeBytes      uint64
	QueuePairCount       uint32
	SQEntries            uint32
	CQEntries            uint32
	QueuePairStrideBytes uint32
	QueuePairsOffset     uint64
	StatsOffset          uint64
	StatsSizeBytes       uint64
	BufferOffset         uint64
	BufferSizeBytes      uint64
	EngineGeneration     uint64
	RegionID             uint64
	EnginePID            uint32
	ClientPID            uint32
	PageSizeBytes        uint32
	Backing              uint32
}

// DecodeRegionDescription copies a description out of its 128 bytes.
func DecodeRegionDescription(b []byte) RegionDescription {
	_ = b[RegionDescriptionSizeBytes-1]
	le := binary.LittleEndian
	return RegionDescription{
		Magic: le.Uint64(b[0:]), LayoutVersion: le.Uint32(b[8:]), HeaderSizeBytes: le.Uint32(b[12:]),
		RegionSizeBytes: le.Uint64(b[16:]), QueuePairCount: le.Uint32(b[24:]), SQEntries: le.Uint32(b[28:]),
		CQEntries: le.Uint32(b[32:]), QueuePairStrideBytes: le.Uint32(b[36:]), QueuePairsOffset: le.Uint64(b[40:]),
		StatsOffset: le.Uint64(b[48:]), StatsSizeBytes: le.Uint64(b[56:]), BufferOffset: le.Uint64(b[64:]),
		BufferSizeBytes: le.Uint64(b[72:]), EngineGeneration: le.Uint64(b[80:]), RegionID: le.Uint64(b[88:]),
		EnginePID: le.Uint32(b[96:]), ClientPID: le.Uint32(b[100:]), PageSizeBytes: le.Uint32(b[104:]),
		Backing: le.Uint32(b[108:]),
	}
}

// NewRegionDescription is the description an engine writes for a region of
// this geometry (the facts only the engine knows are left zero).
func NewRegionDescription(g Geometry) RegionDescription {
	return RegionDescription{
		Magic: RegionMagic, LayoutVersion: LayoutVersion, HeaderSizeBytes: uint32(PageSizeBytes),
		RegionSizeBytes: g.RegionSizeBytes, QueuePairCount: g.QueuePairCount, SQEntries: g.SQEntries,
		CQEntries: g.CQEntries(), QueuePairStrideBytes: g.QueuePairStrideBytes, QueuePairsOffset: g.QueuePairsOffset,
		StatsOffset: g.StatsOffset, StatsSizeBytes: g.StatsSizeBytes, BufferOffset: g.BufferOffset,
		BufferSizeBytes: g.BufferSizeBytes,
	}
}

// Encode writes the description's 128 bytes into b (reserved bytes zero).
func (d *RegionDescription) Encode(b []byte) {
	_ = b[RegionDescriptionSizeBytes-1]
	le := binary.LittleEndian
	le.PutUint64(b[0:], d.Magic)
	le.PutUint32(b[8:], d.LayoutVersion)
	le.PutUint32(b[12:], d.HeaderSizeBytes)
	le.PutUint64(b[16:], d.RegionSizeBytes)
	le.PutUint32(b[24:], d.QueuePairCount)
	le.PutUint32(b[28:], d.SQEntries)
	le.PutUint32(b[32:], d.CQEntries)
	le.PutUint32(b[36:], d.QueuePairStrideBytes)
	le.PutUint64(b[40:], d.QueuePairsOffset)
	le.PutUint64(b[48:], d.StatsOffset)
	le.PutUint64(b[56:], d.StatsSizeBytes)
	le.PutUint64(b[64:], d.BufferOffset)
	le.PutUint64(b[72:], d.BufferSizeBytes)
	le.PutUint64(b[80:], d.EngineGeneration)
	le.PutUint64(b[88:], d.RegionID)
	le.PutUint32(b[96:], d.EnginePID)
	le.PutUint32(b[100:], d.ClientPID)
	le.PutUint32(b[104:], d.PageSizeBytes)
	le.PutUint32(b[108:], d.Backing)
	clear(b[112:RegionDescriptionSizeBytes])
}

// Validate checks magic and version, recomputes the geometry from the counts
// and checks that every offset agrees and fits in mappingSizeBytes, as the
// Rust client does.
func (d *RegionDescription) Validate(mappingSizeBytes uint64) (Geometry, error) {
	if d.Magic != RegionMagic {
		return Geometry{}, fmt.Errorf("region magic is %#018x, not a region of this engine", d.Magic)
	}
	if d.LayoutVersion != LayoutVersion {
		return Geometry{}, fmt.Errorf("region layout version is %d, this library speaks version %d", d.LayoutVersion, LayoutVersion)
	}
	if uint64(d.HeaderSizeBytes) != PageSizeBytes {
		return Geometry{}, fmt.Errorf("region header size is %d, expected %d", d.HeaderSizeBytes, PageSizeBytes)
	}
	g, err := NewGeometry(d.QueuePairCount, d.SQEntries, d.BufferSizeBytes)
	if err != nil {
		return Geometry{}, fmt.Errorf("region geometry is invalid: %w", err)
	}
	checks := []struct {
		field           string
		found, expected uint64
	}{
		{"region_size_bytes", d.RegionSizeBytes, g.RegionSizeBytes},
		{"cq_entries", uint64(d.CQEntries), uint64(g.CQEntries())},
		{"queue_pair_stride_bytes", uint64(d.QueuePairStrideBytes), uint64(g.QueuePairStrideBytes)},
		{"queue_pairs_offset", d.QueuePairsOffset, g.QueuePairsOffset},
		{"stats_offset", d.StatsOffset, g.StatsOffset},
		{"stats_size_bytes", d.StatsSizeBytes, g.StatsSizeBytes},
		{"buffer_offset", d.BufferOffset, g.BufferOffset},
		{"buffer_size_bytes", d.BufferSizeBytes, g.BufferSizeBytes},
	}
	for _, check := range checks {
		if check.found != check.expected {
			return Geometry{}, fmt.Errorf("region header field %s disagrees with the layout its counts imply", check.field)
		}
	}
	if g.RegionSizeBytes > mappingSizeBytes {
		return Geometry{}, fmt.Errorf("region claims %d bytes but the mapping holds %d", g.RegionSizeBytes, mappingSizeBytes)
	}
	return g, nil
}
