package rdma

import (
	"context"
	"errors"
	"fmt"
)

// Code is a negative completion result from the one table of error codes
// (shm-layout/src/entry.rs; layout.json lists the same table).
type Code int32

// The documented completion codes.
const (
	CodeUnknownOpcode     Code = -1
	CodeBadBuffer         Code = -2
	CodeBadLength         Code = -3
	CodeBadReserved       Code = -4
	CodeShutdown          Code = -5
	CodeCanceled          Code = -6
	CodeNothingToCancel   Code = -7
	CodeDeadlineExceeded  Code = -8
	CodeNoSuchVolume      Code = -9
	CodeNoSuchNeedle      Code = -10
	CodeDeleted           Code = -11
	CodeCookieMismatch    Code = -12
	CodeCRCMismatch       Code = -13
	CodeBufferTooSmall    Code = -14
	CodeIOError           Code = -15
	CodeCorruptNeedle     Code = -16
	CodeRangeOutOfBounds  Code = -17
	CodePeerUnavailable   Code = -18
	CodeNotSupported      Code = -19
	CodeMasterUnavailable Code = -20
	CodeHTTPFailed        Code = -21
)

type codeInfo struct {
	name, meaning string
}

// codeTable is the table of shm-layout/src/entry.rs, in table order.
var codeTable = []codeInfo{
	{"UNKNOWN_OPCODE", "the entry's opcode is not an operation this layout version defines"},
	{"BAD_BUFFER", "the entry's buffer range is not inside the region's buffer area"},
	{"BAD_LENGTH", "the entry's lengths are nonsense (zero, or a range that overflows)"},
	{"BAD_RESERVED", "the entry sets flags or reserved fields that must be zero"},
	{"SHUTDOWN", "the engine is shutting down and did not serve this request"},
	{"CANCELED", "the request was canceled before it completed"},
	{"NOTHING_TO_CANCEL", "no request with that user_data is in flight (it may have completed)"},
	{"DEADLINE_EXCEEDED", "the request's deadline passed before it could be served"},
	{"NO_SUCH_VOLUME", "the engine serves no volume with that id"},
	{"NO_SUCH_NEEDLE", "the volume's index has no needle with that id"},
	{"DELETED", "the needle was deleted"},
	{"COOKIE_MISMATCH", "the needle's cookie does not match the one asked for"},
	{"CRC_MISMATCH", "the needle's data failed its CRC-32C check"},
	{"BUFFER_TOO_SMALL", "the buffer is too small; the completion's aux field holds the size needed"},
	{"IO_ERROR", "reading the volume file failed"},
	{"CORRUPT_NEEDLE", "the needle's header does not match its index entry (id or size), or the record is malformed"},
	{"RANGE_OUT_OF_BOUNDS", "the requested byte range is outside the needle's data"},
	{"PEER_UNAVAILABLE", "the volume's exporter could not be reached, or its connection failed during the read"},
	{"NOT_SUPPORTED", "the engine was not configured with a transport that can serve this request"},
	{"MASTER_UNAVAILABLE", "the SeaweedFS master could not be reached or did not answer the volume lookup"},
	{"HTTP_FAILED", "the volume server's HTTP fallback failed: connection lost or an error status (in aux)"},
}

// AllCodes lists every documented code, in table order.
func AllCodes() []Code {
	codes := make([]Code, len(codeTable))
	for i := range codeTable {
		codes[i] = Code(-1 - i)
	}
	return codes
}

func (c Code) info() (codeInfo, bool) {
	index := -1 - int(c)
	if index < 0 || index >= len(codeTable) {
		return codeInfo{}, false
	}
	return codeTable[index], true
}

// Name is the code's documented name (e.g. NO_SUCH_NEEDLE), or UNKNOWN_CODE.
func (c Code) Name() string {
	if info, ok := c.info(); ok {
		return info.name
	}
	return "UNKNOWN_CODE"
}

// Meaning is one sentence for an operator.
func (c Code) Meaning() string {
	if info, ok := c.info(); ok {
		return info.meaning
	}
	return "the engine returned a result that is not a documented code"
}

// String is "NAME (value): meaning", as the Rust tools print a code.
func (c Code) String() string {
	return fmt.Sprintf("%s (%d): %s", c.Name(), int32(c), c.Meaning())
}

// Sentinel errors; a *CompletionError with the matching code satisfies
// errors.Is against them.
var (
	ErrNoSuchVolume   = errors.New("rdma: no such volume")
	ErrNoSuchNeedle   = errors.New("rdma: no such needle")
	ErrDeleted        = errors.New("rdma: needle deleted")
	ErrCookieMismatch = errors.New("rdma: cookie mismatch")
	ErrCRCMismatch    = errors.New("rdma: CRC mismatch")
	// ErrEngineGone: the engine's control connection closed (it died or
	// stopped); no completion will come. The Client is unusable.
	ErrEngineGone = errors.New("rdma: the engine is gone")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("rdma: client closed")
	// ErrBadFileID: the file id is malformed (nothing was submitted).
	ErrBadFileID = errors.New("rdma: malformed file id")
	// ErrNoBufferSpace: the buffer area has no room for the buffer asked for.
	ErrNoBufferSpace = errors.New("rdma: no room in the buffer area")
	// ErrRangeNotSatisfiable: the range's offset is at or past the end of the
	// data served (HTTP 416).
	ErrRangeNotSatisfiable = errors.New("rdma: range not satisfiable")
)

var sentinelOf = map[Code]error{
	CodeNoSuchVolume:   ErrNoSuchVolume,
	CodeNoSuchNeedle:   ErrNoSuchNeedle,
	CodeDeleted:        ErrDeleted,
	CodeCookieMismatch: ErrCookieMismatch,
	CodeCRCMismatch:    ErrCRCMismatch,
}

// CompletionError is a completion that carried a negative result.
type CompletionError struct {
	// Code is the completion's result.
	Code Code
	// Name is the code's documented name (UNKNOWN_CODE if not in the table).
	Name string
	// NeededBytes is the buffer size asked for, for BUFFER_TOO_SMALL.
	NeededBytes uint64
}

func newCompletionError(cqe Cqe) *CompletionError {
	code := Code(cqe.Result)
	return &CompletionError{Code: code, Name: code.Name(), NeededBytes: cqe.Aux}
}

// Error is the code as "NAME (value): meaning".
func (e *CompletionError) Error() string { return e.Code.String() }

// Is matches the sentinel error of the code (ErrNoSuchNeedle and so on);
// DEADLINE_EXCEEDED also matches context.DeadlineExceeded.
func (e *CompletionError) Is(target error) bool {
	if e.Code == CodeDeadlineExceeded && target == context.DeadlineExceeded {
		return true
	}
	sentinel, ok := sentinelOf[e.Code]
	return ok && sentinel == target
}

// ProtocolError says the engine broke the ring protocol (or fenced this client).
type ProtocolError struct{ Reason string }

// Error is "the engine broke the ring protocol: reason".
func (e *ProtocolError) Error() string {
	return "rdma: the engine broke the ring protocol: " + e.Reason
}
