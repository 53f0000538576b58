// The weed mount sidecar protocol, spoken with net/http exactly as the mount
// client spoke it (status 200 = success, body = data, X-RDMA-Used), against
// a real rdma-sidecar on a real engine reading a real SeaweedFS volume
// server's directory. See README.md for the binaries it needs.
package mounttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	concurrency  = 64
	readsPerTask = 4
	readyTimeout = 60 * time.Second
)

// file is one uploaded needle and its content.
type file struct {
	fid  string
	data []byte
}

// binary returns the path an environment variable names, failing the test
// when it is unset (unless RDMA_TESTS_ALLOW_SKIP names weed: then the skip is
// said and written to RDMA_TESTS_SKIP_LOG, as the Rust tests do).
func binary(t *testing.T, name string) string {
	t.Helper()
	for _, part := range strings.Split(os.Getenv("RDMA_TESTS_ALLOW_SKIP"), ",") {
		if strings.TrimSpace(part) == "weed" {
			if log := os.Getenv("RDMA_TESTS_SKIP_LOG"); log != "" {
				if file, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					fmt.Fprintln(file, "weed: tests/go needs a real SeaweedFS")
					file.Close()
				}
			}
			t.Skip("SKIPPED (weed): this test needs a real SeaweedFS")
		}
	}
	path := os.Getenv(name)
	if path == "" {
		t.Fatalf("%s is not set: it names a binary this test runs (deploy/test.sh sets it)", name)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s=%s: %v", name, path, err)
	}
	return path
}

// freePort returns a loopback port, and one whose gRPC twin (+10000) is free
// when twin is set (weed listens on both).
func freePort(t *testing.T, twin bool) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := listener.Addr().(*net.TCPAddr).Port
		listener.Close()
		if !twin {
			return port
		}
		if port < 55000 {
			if other, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000)); err == nil {
				other.Close()
				return port
			}
		}
	}
	t.Fatal("no free port")
	return 0
}

// start runs a process with its output in a log file and kills it when the test ends.
func start(t *testing.T, dir, name, program string, args ...string) string {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	command := exec.Command(program, args...)
	command.Stdout, command.Stderr = logFile, logFile
	if err := command.Start(); err != nil {
		t.Fatalf("start %s: %v", program, err)
	}
	t.Cleanup(func() {
		command.Process.Kill()
		command.Wait()
		logFile.Close()
	})
	return logPath
}

// waitFor polls ready until it is true, at most readyTimeout.
func waitFor(t *testing.T, what, logPath string, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		if ready() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(logPath)
	t.Fatalf("%s was not ready within %v; log:\n%s", what, readyTimeout, log)
}

func upload(t *testing.T, master string, name string, data []byte) file {
	t.Helper()
	response, err := http.Get("http://" + master + "/dir/assign")
	if err != nil {
		t.Fatal(err)
	}
	var assigned struct{ Fid, Url string }
	err = json.NewDecoder(response.Body).Decode(&assigned)
	response.Body.Close()
	if err != nil || assigned.Fid == "" {
		t.Fatalf("assign: %v %+v", err, assigned)
	}
	var body bytes.Buffer
	writer := multipart.NewWriter(&body)
	header := textproto.MIMEHeader{}
	header.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename="%s"`, name))
	header.Set("Content-Type", "application/octet-stream")
	part, _ := writer.CreatePart(header)
	part.Write(data)
	writer.Close()
	response, err = http.Post("http://"+assigned.Url+"/"+assigned.Fid, writer.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, response.Body)
	response.Body.Close()
	if response.StatusCode != http.StatusCreated {
		t.Fatalf("upload of %s: %s", name, response.Status)
	}
	return file{fid: assigned.Fid, data: data}
}

// setup starts weed, uploads files, starts the engine and the sidecar, and
// returns the sidecar's address, the volume server's and the files.
func setup(t *testing.T) (string, string, []file) {
	weed := binary(t, "WEED_BINARY")
	engine := binary(t, "RDMA_ENGINE")
	sidecar := binary(t, "RDMA_SIDECAR")
	dir := t.TempDir()
	masterDir, volumeDir := filepath.Join(dir, "master"), filepath.Join(dir, "volume")
	os.MkdirAll(masterDir, 0o755)
	os.MkdirAll(volumeDir, 0o755)

	masterPort := freePort(t, true)
	master := fmt.Sprintf("127.0.0.1:%d", masterPort)
	masterLog := start(t, dir, "master", weed, "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		fmt.Sprintf("-port=%d", masterPort), "-mdir="+masterDir, "-volumeSizeLimitMB=1024")
	volumePort := freePort(t, true)
	volumeServer := fmt.Sprintf("127.0.0.1:%d", volumePort)
	start(t, dir, "volume", weed, "volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		fmt.Sprintf("-port=%d", volumePort), "-dir="+volumeDir, "-master="+master, "-max=8",
		// An absolute floor: the default (1 % of the disk) refuses every volume
		// on a large shared disk that is 99 % full (seen on a CI machine).
		"-minFreeSpace=64MiB")
	waitFor(t, "SeaweedFS", masterLog, func() bool {
		response, err := http.Get("http://" + master + "/dir/assign")
		if err != nil {
			return false
		}
		defer response.Body.Close()
		text, _ := io.ReadAll(response.Body)
		return response.StatusCode == 200 && strings.Contains(string(text), `"fid"`)
	})

	random := rand.New(rand.NewSource(11))
	var files []file
	for i, size := range []int{1, 100, 4096, 10000, 65536, 200000, 1 << 20} {
		data := make([]byte, size)
		random.Read(data)
		files = append(files, upload(t, master, fmt.Sprintf("file%d.bin", i), data))
	}

	socket := filepath.Join(dir, "engine.sock")
	engineLog := start(t, dir, "engine", engine, "--socket", socket, "--volume-dir", volumeDir)
	waitFor(t, "rdma-engine", engineLog, func() bool {
		connection, err := net.Dial("unixpacket", socket)
		if err == nil {
			connection.Close()
		}
		return err == nil
	})
	address := fmt.Sprintf("127.0.0.1:%d", freePort(t, false))
	sidecarLog := start(t, dir, "sidecar", sidecar, "--socket", socket, "--listen", address)
	t.Cleanup(func() {
		if t.Failed() {
			for _, path := range []string{engineLog, sidecarLog} {
				text, _ := os.ReadFile(path)
				t.Logf("--- %s\n%s", path, text)
			}
		}
	})
	waitFor(t, "rdma-sidecar", sidecarLog, func() bool {
		response, err := http.Get("http://" + address + "/health")
		if err == nil {
			response.Body.Close()
		}
		return err == nil && response.StatusCode == 200
	})
	return address, volumeServer, files
}

// readNeedle is the mount client's ReadNeedle: GET /read, 200 means the
// body is the data.
func readNeedle(ctx context.Context, client *http.Client, sidecar, volumeServer, fid string, offset, size int) ([]byte, bool, error) {
	url := fmt.Sprintf("http://%s/read?file_id=%s&offset=%d&size=%d&volume_server=http://%s",
		sidecar, fid, offset, size, volumeServer)
	request, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, false, err
	}
	response, err := client.Do(request)
	if err != nil {
		return nil, false, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return nil, false, err
	}
	if response.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("status %s: %s", response.Status, body)
	}
	isRDMA := strings.Contains(response.Header.Get("X-Source"), "rdma") || response.Header.Get("X-RDMA-Used") == "true"
	return body, isRDMA, nil
}

func TestMountProtocol(t *testing.T) {
	sidecar, volumeServer, files := setup(t)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}

	response, err := client.Get("http://" + sidecar + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var health struct {
		Status string
		RDMA   struct{ Enabled, Connected bool }
	}
	json.NewDecoder(response.Body).Decode(&health)
	response.Body.Close()
	if health.Status != "healthy" || !health.RDMA.Enabled || !health.RDMA.Connected {
		t.Fatalf("health: %+v", health)
	}

	// 64 requests at once, each task several reads of whole files and ranges.
	var wait sync.WaitGroup
	gate := make(chan struct{})
	failures := make(chan string, concurrency*readsPerTask)
	for task := 0; task < concurrency; task++ {
		wait.Add(1)
		go func(task int) {
			defer wait.Done()
			<-gate
			for i := 0; i < readsPerTask; i++ {
				f := files[(task+i)%len(files)]
				offset, size := 0, 0
				if (task+i)%2 == 1 && len(f.data) > 1 {
					offset = (task * 7919) % (len(f.data) - 1)
					size = 1 + (task*104729)%(len(f.data)-offset)
				}
				want := f.data[offset:]
				if size > 0 {
					want = f.data[offset : offset+size]
				}
				data, isRDMA, err := readNeedle(context.Background(), client, sidecar, volumeServer, f.fid, offset, size)
				switch {
				case err != nil:
					failures <- fmt.Sprintf("%s offset=%d size=%d: %v", f.fid, offset, size, err)
				case !bytes.Equal(data, want):
					failures <- fmt.Sprintf("%s offset=%d size=%d: %d bytes, want %d", f.fid, offset, size, len(data), len(want))
				case !isRDMA:
					failures <- fmt.Sprintf("%s: X-RDMA-Used is not true", f.fid)
				}
			}
		}(task)
	}
	close(gate)
	wait.Wait()
	close(failures)
	for failure := range failures {
		t.Error(failure)
	}

	// A failure is a non-200 with one line; the mount client then falls back.
	for _, query := range []string{"file_id=abc", "file_id=" + files[0].fid + "&size=-1"} {
		response, err := client.Get("http://" + sidecar + "/read?" + query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(response.Body)
		response.Body.Close()
		if response.StatusCode == http.StatusOK || strings.Count(strings.TrimRight(string(body), "\n"), "\n") != 0 {
			t.Errorf("/read?%s: %s %q, want a non-200 with one line", query, response.Status, body)
		}
	}
}
