package rdma

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
)

// Reading a needle's content the way SeaweedFS's volume server serves
// GET /<fid> to a client that does not accept gzip, exactly as rdma-cat does
// (client/src/reader/content.rs):
//   - a needle flagged compressed whose data starts with the gzip magic is
//     decompressed (multi-member); flagged data without the magic is served
//     as stored;
//   - a range applies to the served (decompressed) bytes, so a range of a
//     gzipped needle is read whole, decompressed, then cut;
//   - ranges follow Go's parseRange for bytes=O-E: an offset at or past the
//     end is ErrRangeNotSatisfiable, an end past the data is clipped;
//   - a read whose buffer is too small is re-issued once with the size the
//     engine asks for (BUFFER_TOO_SMALL carries it in aux).
// Corrupt gzip data is an error (upstream answers 200 with an empty body).

const (
	// initialBufferBytes holds a 1 MiB needle's whole record in one read.
	initialBufferBytes = (1 << 20) + 4096
	// maxDecompressedBytes bounds a gunzip (gzip bombs).
	maxDecompressedBytes = 4 << 30
	bufferRetryLimit     = 1
)

// ReadFileID reads the needle fid names and returns its data as the volume
// server's GET gives it to a client without gzip. A malformed fid is an
// ErrBadFileID error before anything is submitted; a needle error is a
// *CompletionError (errors.Is with ErrNoSuchNeedle, ErrDeleted, ...).
func (c *Client) ReadFileID(ctx context.Context, fid string) ([]byte, error) {
	id, err := ParseFileID(fid)
	if err != nil {
		return nil, err
	}
	return c.readWhole(ctx, id, false, 0, 0)
}

// ReadRange reads length bytes at offset of the data ReadFileID would
// return (length 0: to the end), with HTTP's range rules: an offset at or
// past the end is ErrRangeNotSatisfiable, an end past the data is clipped.
func (c *Client) ReadRange(ctx context.Context, fid string, offset, length uint64) ([]byte, error) {
	id, err := ParseFileID(fid)
	if err != nil {
		return nil, err
	}
	if length == 0 {
		return c.readWhole(ctx, id, true, offset, 0)
	}
	// An end past 2^64 is an end past the data: clip it so the entry's
	// offset + length cannot overflow.
	length = min(length, ^uint64(0)-offset)
	length = max(length, 1)
	outcome, err := c.readRetrying(ctx, id, &rangeSpec{offset, length}, uint32(min(length, initialBufferBytes)))
	var completionError *CompletionError
	switch {
	case err == nil && !outcome.gzipped:
		return outcome.data, nil
	case err == nil,
		errors.As(err, &completionError) && (completionError.Code == CodeRangeOutOfBounds || completionError.Code == CodeBadLength):
		// The served bytes of a gzipped needle are its decompressed ones,
		// which the engine cannot see; an offset past the stored bytes is
		// judged against the served bytes. Both need the whole needle.
		return c.readWhole(ctx, id, true, offset, length)
	default:
		return nil, err
	}
}

type rangeSpec struct{ offset, length uint64 }

type outcome struct {
	data    []byte
	gzipped bool
	source  uint32
}

func (c *Client) readWhole(ctx context.Context, id FileID, cut bool, offset, length uint64) ([]byte, error) {
	outcome, err := c.readRetrying(ctx, id, nil, initialBufferBytes)
	if err != nil {
		return nil, err
	}
	data := outcome.data
	if outcome.gzipped && len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		if data, err = gunzip(data); err != nil {
			return nil, err
		}
	}
	if !cut {
		return data, nil
	}
	size := uint64(len(data))
	if offset >= size {
		return nil, fmt.Errorf("%w: the needle has %d bytes, offset %d is not inside it", ErrRangeNotSatisfiable, size, offset)
	}
	end := size
	if length != 0 && offset+length >= offset {
		end = min(offset+length, size)
	}
	return data[offset:end], nil
}

func gunzip(data []byte) ([]byte, error) {
	reader, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("rdma: the needle is flagged gzip but its data does not decompress: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(reader, maxDecompressedBytes+1))
	if err != nil {
		return nil, fmt.Errorf("rdma: the needle is flagged gzip but its data does not decompress: %w", err)
	}
	if len(out) > maxDecompressedBytes {
		return nil, fmt.Errorf("rdma: the needle decompresses to more than %d bytes", maxDecompressedBytes)
	}
	return out, nil
}

// readRetrying is one read, re-issued once with the size the engine asks for.
func (c *Client) readRetrying(ctx context.Context, id FileID, spec *rangeSpec, bufferBytes uint32) (outcome, error) {
	// Every concurrent reader must be able to hold its first buffer.
	share := c.geometry.BufferSizeBytes / uint64(c.geometry.QueuePairCount) / unitBytes * unitBytes
	bufferBytes = uint32(min(uint64(bufferBytes), max(share, unitBytes)))
	for retries := 0; ; retries++ {
		result, err := c.readOnce(ctx, id, spec, bufferBytes)
		var completionError *CompletionError
		if errors.As(err, &completionError) && completionError.Code == CodeBufferTooSmall &&
			retries < bufferRetryLimit && completionError.NeededBytes > uint64(bufferBytes) &&
			completionError.NeededBytes <= uint64(MaxBufferLengthBytes) {
			bufferBytes = uint32(completionError.NeededBytes)
			continue
		}
		return result, err
	}
}

// readOnce submits one read on a queue pair of the pool and waits for it.
func (c *Client) readOnce(ctx context.Context, id FileID, spec *rangeSpec, bufferBytes uint32) (outcome, error) {
	if err := c.enter(); err != nil {
		return outcome{}, err
	}
	defer c.leave()
	q, err := c.TakeQueuePair(ctx)
	if err != nil {
		return outcome{}, err
	}
	defer q.Release()
	buffer, err := c.Allocate(bufferBytes)
	if err != nil {
		return outcome{}, err
	}
	defer buffer.Free()
	const tag = 1
	if spec == nil {
		err = q.PrepareRead(id, buffer, tag, deadlineNs(ctx))
	} else {
		err = q.PrepareReadRange(id, spec.offset, spec.length, buffer, tag, deadlineNs(ctx))
	}
	if err != nil {
		return outcome{}, err
	}
	if err := q.Submit(); err != nil {
		return outcome{}, err
	}
	if _, err := q.Wait(ctx, 1); err != nil {
		if ctx.Err() != nil && c.usable() == nil {
			// Ask the engine to stop; Release hands the queue pair to a
			// drainer until both completions came (the read returns now).
			if q.PrepareCancel(tag, tag+1) == nil {
				_ = q.Submit()
			}
		}
		return outcome{}, err
	}
	completion, ok, err := q.Reap()
	if err != nil {
		return outcome{}, err
	}
	if !ok {
		return outcome{}, &ProtocolError{"the CQ said a completion was ready, but none was"}
	}
	if err := completion.Err(); err != nil {
		return outcome{}, err
	}
	data := completion.Data()
	if data == nil {
		return outcome{}, &ProtocolError{"the completion does not place its data inside the buffer"}
	}
	return outcome{data: bytes.Clone(data), gzipped: completion.Gzipped(), source: completion.Source()}, nil
}
