package rdma_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	rdma "github.com/seaweedfs-rdma/client/go"
)

// The harness of the live tests: real rdma-engine processes (binaries named
// by RDMA_ENGINE, RDMA_CAT and RDMA_VOLGEN, which deploy/test.sh sets), real
// volume files (SeaweedFS's own fixtures and volgen's), real shared memory.

// readyTimeout bounds waiting for an engine to listen or a region to go:
// a readiness bound, not a measurement.
const readyTimeout = 30 * time.Second

const helperEnv = "RDMA_GO_TEST_HELPER_SOCKET"

// TestMain doubles as the helper process of the client-death test: with
// helperEnv set it attaches, says so on stdout and waits to be killed.
func TestMain(m *testing.M) {
	if socket := os.Getenv(helperEnv); socket != "" {
		client, err := rdma.Attach(socket, rdma.Options{Name: "go-helper"})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("attached", client.Description().RegionID)
		select {}
	}
	os.Exit(m.Run())
}

// binaryPath is the path an environment variable names; the test fails when it
// is unset (deploy/test.sh sets it).
func binaryPath(t *testing.T, name string) string {
	t.Helper()
	path := os.Getenv(name)
	if path == "" {
		t.Fatalf("%s is not set: it names a binary this test runs (deploy/test.sh sets it)", name)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s=%s: %v", name, path, err)
	}
	return path
}

type engine struct {
	command *exec.Cmd
	socket  string
	logPath string
	exited  chan struct{}
}

// startEngine starts rdma-engine serving volumeDir and waits until it accepts connections.
func startEngine(t *testing.T, volumeDir string) *engine {
	t.Helper()
	return startEngineAt(t, volumeDir, filepath.Join(t.TempDir(), "engine.sock"))
}

// restartEngine starts a new engine on the socket of e, which has exited.
func restartEngine(t *testing.T, e *engine, volumeDir string) *engine {
	t.Helper()
	return startEngineAt(t, volumeDir, e.socket)
}

// startEngineAt starts rdma-engine on socket serving volumeDir and waits
// until it accepts connections.
func startEngineAt(t *testing.T, volumeDir, socket string) *engine {
	t.Helper()
	e := &engine{socket: socket, logPath: filepath.Join(t.TempDir(), "engine.log"), exited: make(chan struct{})}
	logFile, err := os.Create(e.logPath)
	if err != nil {
		t.Fatal(err)
	}
	e.command = exec.Command(binaryPath(t, "RDMA_ENGINE"), "--socket", e.socket, "--volume-dir", volumeDir)
	e.command.Stdout, e.command.Stderr = logFile, logFile
	if err := e.command.Start(); err != nil {
		t.Fatalf("cannot start rdma-engine: %v", err)
	}
	go func() { e.command.Wait(); logFile.Close(); close(e.exited) }()
	t.Cleanup(func() { e.kill() })
	deadline := time.Now().Add(readyTimeout)
	for {
		if connection, err := net.Dial("unixpacket", e.socket); err == nil {
			connection.Close()
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("rdma-engine did not listen within %v; log:\n%s", readyTimeout, e.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *engine) kill() {
	if e.command.Process != nil {
		e.command.Process.Signal(syscall.SIGKILL)
		<-e.exited
	}
}

func (e *engine) log() string {
	text, _ := os.ReadFile(e.logPath)
	return string(text)
}

// waitForRegions waits until the engine lists count regions; false if it never does.
func (e *engine) waitForRegions(t *testing.T, count int) bool {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		regions, err := rdma.ListRegions(e.socket)
		if err != nil {
			t.Fatalf("ListRegions: %v", err)
		}
		if len(regions) == count {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func installFixture(t *testing.T, dir, stem string, volumeID uint32) {
	t.Helper()
	for _, extension := range []string{"dat", "idx"} {
		data, err := os.ReadFile(filepath.Join("../../volume-format/tests/fixtures", stem+"."+extension))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.%s", volumeID, extension)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// generateVolume writes volume volumeID with volgen and returns its file ids.
func generateVolume(t *testing.T, dir string, volumeID uint32, count int, sizes string) []string {
	t.Helper()
	fidsPath := filepath.Join(t.TempDir(), "fids")
	output, err := exec.Command(binaryPath(t, "RDMA_VOLGEN"), "--dir", dir, "--volume-id", fmt.Sprint(volumeID),
		"--count", fmt.Sprint(count), "--sizes", sizes, "--fids-out", fidsPath).CombinedOutput()
	if err != nil {
		t.Fatalf("volgen: %v\n%s", err, output)
	}
	text, err := os.ReadFile(fidsPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(text))
}

// needle is one needle an index names, live or deleted.
type needle struct {
	fid  rdma.FileID
	live bool
}

// indexedNeedles replays a volume's .idx (big-endian id u64, offset u32 in
// 8-byte units, size i32; a non-zero offset with a positive size sets,
// anything else deletes) and takes each needle's cookie from its record in
// the .dat. A needle deleted before it was ever set is left out.
func indexedNeedles(t *testing.T, dir string, volumeID uint32) []needle {
	t.Helper()
	index, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d.idx", volumeID)))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d.dat", volumeID)))
	if err != nil {
		t.Fatal(err)
	}
	position := map[uint64]int{}
	var needles []needle
	for entry := index; len(entry) >= 16; entry = entry[16:] {
		id := binary.BigEndian.Uint64(entry)
		offset := uint64(binary.BigEndian.Uint32(entry[8:])) * 8
		size := int32(binary.BigEndian.Uint32(entry[12:]))
		i, seen := position[id]
		if offset != 0 && size > 0 {
			if offset+4 > uint64(len(data)) {
				t.Fatalf("volume %d: needle %#x at %d is outside the .dat", volumeID, id, offset)
			}
			n := needle{fid: rdma.FileID{VolumeID: volumeID, NeedleID: id, Cookie: binary.BigEndian.Uint32(data[offset:])}, live: true}
			if seen {
				needles[i] = n
			} else {
				position[id] = len(needles)
				needles = append(needles, n)
			}
		} else if seen {
			needles[i].live = false
		}
	}
	return needles
}

// catResult is what rdma-cat printed and how it exited.
type catResult struct {
	stdout []byte
	stderr string
	code   int
}

// rdmaCat runs the Rust client's rdma-cat: the reference for every read.
func rdmaCat(t *testing.T, rdmaCatPath, socket, fid string, extra ...string) catResult {
	t.Helper()
	command := exec.Command(rdmaCatPath, append([]string{"--socket", socket, fid}, extra...)...)
	var stdout, stderr bytes.Buffer
	command.Stdout, command.Stderr = &stdout, &stderr
	err := command.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return catResult{stdout.Bytes(), stderr.String(), 0}
	case errors.As(err, &exit):
		return catResult{stdout.Bytes(), stderr.String(), exit.ExitCode()}
	default:
		t.Fatalf("cannot run rdma-cat: %v", err)
		return catResult{}
	}
}

// startHelper starts this test binary as a Go client process attached to socket.
func startHelper(t *testing.T, socket string) *exec.Cmd {
	t.Helper()
	command := exec.Command(os.Args[0])
	command.Env = append(os.Environ(), helperEnv+"="+socket)
	stdout, err := command.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	command.Stderr = os.Stderr
	if err := command.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "attached") {
		command.Process.Kill()
		command.Wait()
		t.Fatalf("the helper client did not attach: %q %v", line, err)
	}
	go io.Copy(io.Discard, stdout)
	return command
}
