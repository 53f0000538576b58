package rdma

import (
	"encoding/json"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The control socket (ipc/src/control.rs): a Unix SOCK_SEQPACKET socket, one
// JSON document per packet (serde's externally tagged enums), a region's
// memfd attached to its message by SCM_RIGHTS. The connection stays open for
// the life of an attachment: its EOF is how each side learns the other died.

const (
	maxMessageBytes   = 64 * 1024
	maxFDsPerMessage  = 64
	controlTimeoutSec = 10
)

type attachRequest struct {
	LayoutVersion   uint32 `json:"layout_version"`
	QueuePairs      uint32 `json:"queue_pairs"`
	SQEntries       uint32 `json:"sq_entries"`
	BufferSizeBytes uint64 `json:"buffer_size_bytes"`
	ClientName      string `json:"client_name"`
}

type attachReply struct {
	RegionID         uint64 `json:"region_id"`
	RegionSizeBytes  uint64 `json:"region_size_bytes"`
	EngineGeneration uint64 `json:"engine_generation"`
	Hugepages        bool   `json:"hugepages"`
}

// RegionSummary is one attached region as the engine lists it.
type RegionSummary struct {
	RegionID        uint64 `json:"region_id"`
	ClientPID       uint32 `json:"client_pid"`
	ClientName      string `json:"client_name"`
	RegionSizeBytes uint64 `json:"region_size_bytes"`
}

type regionsReply struct {
	EnginePID        uint32          `json:"engine_pid"`
	EngineGeneration uint64          `json:"engine_generation"`
	Regions          []RegionSummary `json:"regions"`
}

// response is the engine's answer: exactly one member is set.
type response struct {
	Attached *attachReply `json:"Attached"`
	Refused  *struct {
		Reason string `json:"reason"`
	} `json:"Refused"`
	Regions *regionsReply `json:"Regions"`
	Serving *struct {
		RegionID uint64 `json:"region_id"`
	} `json:"Serving"`
}

type mappedRequest struct {
	RegionID uint64 `json:"region_id"`
}

// confirmMapped is the second round trip of an attach: it tells the engine the region is
// mapped, and waits while the engine seals it (no new writable mappings, no hole punching)
// and starts serving it.
func confirmMapped(fd int, regionID uint64) error {
	if err := sendMessage(fd, map[string]mappedRequest{"Mapped": {RegionID: regionID}}); err != nil {
		return err
	}
	answer, fds, err := receiveResponse(fd)
	if err != nil {
		return err
	}
	closeAll(fds)
	switch {
	case answer.Refused != nil:
		return fmt.Errorf("rdma: the engine refused to serve the region: %s", answer.Refused.Reason)
	case answer.Serving == nil || answer.Serving.RegionID != regionID:
		return errors.New("rdma: the engine answered the mapping with a message that does not fit it")
	}
	return nil
}

// connect opens a close-on-exec SEQPACKET connection to the engine, with
// send and receive timeouts so a stuck engine cannot hang Attach.
func connect(socketPath string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("rdma: cannot create a control socket: %w", err)
	}
	timeout := unix.Timeval{Sec: controlTimeoutSec}
	for _, option := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, option, &timeout); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("rdma: cannot set a control socket timeout: %w", err)
		}
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: socketPath})
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("rdma: cannot connect to the engine at %s: %w", socketPath, err)
	}
	return fd, nil
}

// sendMessage sends one JSON message (no fds: a client never sends any).
func sendMessage(fd int, message any) error {
	bytes, err := json.Marshal(message)
	if err != nil {
		return fmt.Errorf("rdma: cannot encode a control message: %w", err)
	}
	if err := unix.Sendmsg(fd, bytes, nil, nil, unix.MSG_NOSIGNAL); err != nil {
		return fmt.Errorf("rdma: control socket send failed: %w", err)
	}
	return nil
}

// receiveResponse receives one message and the fds that came with it.
func receiveResponse(fd int) (response, []int, error) {
	buffer := make([]byte, maxMessageBytes)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerMessage))
	var n, oobn, flags int
	var err error
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buffer, oob, unix.MSG_CMSG_CLOEXEC)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return response{}, nil, fmt.Errorf("rdma: control socket receive failed: %w", err)
	}
	var fds []int
	messages, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err == nil {
		for i := range messages {
			if rights, err := unix.ParseUnixRights(&messages[i]); err == nil {
				fds = append(fds, rights...)
			}
		}
	}
	fail := func(err error) (response, []int, error) {
		closeAll(fds)
		return response{}, nil, err
	}
	if n == 0 {
		return fail(fmt.Errorf("%w: the engine closed the control socket", ErrEngineGone))
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return fail(fmt.Errorf("rdma: control message of %d bytes is truncated (too large or too many fds)", n))
	}
	var answer response
	if err := json.Unmarshal(buffer[:n], &answer); err != nil {
		return fail(fmt.Errorf("rdma: control message of %d bytes is not valid: %w", n, err))
	}
	return answer, fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// ListRegions asks the engine at socketPath for the regions attached to it
// (what ringstat shows). The read-only fds that come with the answer are closed.
func ListRegions(socketPath string) ([]RegionSummary, error) {
	fd, err := connect(socketPath)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := sendMessage(fd, "ListRegions"); err != nil {
		return nil, err
	}
	answer, fds, err := receiveResponse(fd)
	if err != nil {
		return nil, err
	}
	closeAll(fds)
	switch {
	case answer.Regions != nil:
		return answer.Regions.Regions, nil
	case answer.Refused != nil:
		return nil, fmt.Errorf("rdma: the engine refused to list regions: %s", answer.Refused.Reason)
	default:
		return nil, errors.New("rdma: the engine answered with a message that does not fit the request")
	}
}
