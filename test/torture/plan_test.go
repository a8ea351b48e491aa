package torture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
)

// A plan says everything one connection does: its shape, who sends how
// many bytes each way and how, and how each receiver reads. The client
// sends it in a fixed-size header before anything else, so the torture
// backend knows its part without any other channel (the in-process
// session registry only carries the "I have every byte" signals that keep
// a connection open until both receivers are done).

// shape is what a connection does.
type shape uint8

const (
	shapeUpload          shape = iota // client sends, held open until the backend has every byte
	shapeDownload                     // backend sends, held open until the client has every byte
	shapeBoth                         // both at once, each held open until the other side has everything
	shapeEcho                         // ping-pong: a message, its echo, the next message
	shapePipeline                     // every request sent at once, responses read as they come
	shapeHalfCloseClient              // client sends then shuts its write half at once; the download goes on
	shapeHalfCloseServer              // backend sends then shuts its write half at once; the upload goes on
	shapeResetClient                  // client sends part, then resets (RST); the backend must see the end
	shapeResetServer                  // backend sends part, then resets; the client must see the end
	numShapes
)

var shapeNames = [numShapes]string{"upload", "download", "both", "echo", "pipeline",
	"halfclose-client", "halfclose-server", "reset-client", "reset-server"}

func (s shape) String() string { return kindName(shapeNames[:], s, "shape") }

// kindName names v from names, or says it is unknown.
func kindName[T ~uint8](names []string, v T, kind string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

// sender is how a peer puts its bytes on the socket (peers_test.go).
type sender uint8

const (
	sendWrite    sender = iota // write(2), sizes from 1 byte to 1 MiB
	sendWritev                 // writev(2) through net.Buffers
	sendSendfile               // sendfile(2) from a memfd
	sendSplice                 // splice(2) from another socket, through a pipe
	numSenders
)

var senderNames = [numSenders]string{"write", "writev", "sendfile", "splice"}

func (s sender) String() string { return kindName(senderNames[:], s, "sender") }

// receiver is how a peer reads (peers_test.go).
type receiver uint8

const (
	recvFast  receiver = iota // big reads, back to back
	recvPaced                 // small reads with sleeps between them
	recvStop                  // reads fast, stops for seconds once or twice, resumes
	numReceivers
)

var receiverNames = [numReceivers]string{"fast", "paced", "stop"}

func (r receiver) String() string { return kindName(receiverNames[:], r, "receiver") }

// plan is one connection's script.
type plan struct {
	seed uint64 // the run's seed: with id, it makes both payloads
	id   uint64
	shape
	upSend, downSend sender
	upRecv, downRecv receiver
	// clientCloses says which side sends the first FIN once every byte
	// was received (shapes that end with an orderly close).
	clientCloses bool
	// up and down are the payload bytes each way. For the reset shapes
	// they are what the resetting side sends before its reset; for echo
	// and pipeline the sums of the messages.
	up, down int64
	writeMax uint32 // largest write(2)/writev(2) of either sender
	rounds   uint32 // messages of echo and pipeline
}

const (
	headerSize  = 64
	headerMagic = "TRT1"
)

func (p *plan) String() string {
	return fmt.Sprintf("conn %d: %s up=%d(%s→%s) down=%d(%s→%s) writeMax=%d rounds=%d clientCloses=%v",
		p.id, p.shape, p.up, p.upSend, p.upRecv, p.down, p.downSend, p.downRecv, p.writeMax, p.rounds, p.clientCloses)
}

// marshal encodes the plan as the header the client sends first.
func (p *plan) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, headerMagic)
	binary.BigEndian.PutUint64(b[4:], p.seed)
	binary.BigEndian.PutUint64(b[12:], p.id)
	b[20], b[21], b[22], b[23], b[24] = byte(p.shape), byte(p.upSend), byte(p.downSend), byte(p.upRecv), byte(p.downRecv)
	if p.clientCloses {
		b[25] = 1
	}
	binary.BigEndian.PutUint64(b[26:], uint64(p.up))
	binary.BigEndian.PutUint64(b[34:], uint64(p.down))
	binary.BigEndian.PutUint32(b[42:], p.writeMax)
	binary.BigEndian.PutUint32(b[46:], p.rounds)
	return b
}

// unmarshalPlan decodes and checks a header.
func unmarshalPlan(b []byte) (*plan, error) {
	if len(b) != headerSize || string(b[:4]) != headerMagic {
		return nil, fmt.Errorf("not a torture header: %q", b[:min(len(b), 8)])
	}
	p := &plan{
		seed: binary.BigEndian.Uint64(b[4:]), id: binary.BigEndian.Uint64(b[12:]),
		shape: shape(b[20]), upSend: sender(b[21]), downSend: sender(b[22]),
		upRecv: receiver(b[23]), downRecv: receiver(b[24]), clientCloses: b[25] == 1,
		up: int64(binary.BigEndian.Uint64(b[26:])), down: int64(binary.BigEndian.Uint64(b[34:])),
		writeMax: binary.BigEndian.Uint32(b[42:]), rounds: binary.BigEndian.Uint32(b[46:]),
	}
	switch {
	case p.shape >= numShapes || p.upSend >= numSenders || p.downSend >= numSenders ||
		p.upRecv >= numReceivers || p.downRecv >= numReceivers:
		return nil, errors.New("torture header: an unknown kind")
	case p.up < 0 || p.down < 0 || p.writeMax == 0:
		return nil, errors.New("torture header: bad sizes")
	}
	return p, nil
}

// rng returns a generator that both ends derive alike from the plan, for
// the decisions they must agree on (message sizes).
func (p *plan) rng(stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(hash2(p.seed, p.id), stream))
}

// messages returns the request sizes (echo: also the replies) and, for
// pipeline, the response sizes.
func (p *plan) messages() (req, resp []int64) {
	rng := p.rng(1)
	size := func() int64 { return 1 + rng.Int64N(int64(1)<<rng.IntN(17)) } // log-uniform, at most 64 KiB
	for range p.rounds {
		req = append(req, size())
		if p.shape == shapePipeline {
			resp = append(resp, size())
		}
	}
	return req, resp
}

// sizes are the payload sizes a plan draws from: mostly small, some
// beyond the splice pipe's 1 MiB (where a stall hides), a few large.
type sizes struct {
	medium, large int64 // upper bounds of the medium and large classes
}

func (s sizes) draw(rng *rand.Rand) int64 {
	switch r := rng.IntN(100); {
	case r < 10:
		return 1 + rng.Int64N(64)
	case r < 55:
		return 64 + rng.Int64N(64<<10)
	case r < 90:
		return 64<<10 + rng.Int64N(s.medium)
	default:
		return s.medium + rng.Int64N(s.large-s.medium)
	}
}

// writeMaxes are the write sizes a plan's senders go up to: a byte, a
// small record, a segment, a page, and powers of two up to 1 MiB.
var writeMaxes = []uint32{1, 7, 100, 1448, 4096, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

// randomPlan draws a connection with every choice random.
func randomPlan(rng *rand.Rand, seed, id uint64, sz sizes) *plan {
	p := &plan{
		seed: seed, id: id,
		shape:  shape(rng.IntN(int(numShapes))),
		upSend: sender(rng.IntN(int(numSenders))), downSend: sender(rng.IntN(int(numSenders))),
		upRecv: receiver(rng.IntN(int(numReceivers))), downRecv: receiver(rng.IntN(int(numReceivers))),
		clientCloses: rng.IntN(2) == 0,
		writeMax:     writeMaxes[rng.IntN(len(writeMaxes))],
	}
	p.setSizes(rng, sz)
	return p
}

// setSizes fills up, down and rounds for the plan's shape.
func (p *plan) setSizes(rng *rand.Rand, sz sizes) {
	p.up, p.down, p.rounds = 0, 0, 0
	switch p.shape {
	case shapeUpload:
		p.up = sz.draw(rng)
	case shapeDownload:
		p.down = sz.draw(rng)
	case shapeEcho, shapePipeline:
		p.rounds = 1 + uint32(rng.IntN(64))
		req, resp := p.messages()
		for _, n := range req {
			p.up += n
		}
		p.down = p.up
		if p.shape == shapePipeline {
			p.down = 0
			for _, n := range resp {
				p.down += n
			}
		}
	default:
		p.up, p.down = sz.draw(rng), sz.draw(rng)
	}
	p.fitWriteMax()
}

// fitWriteMax raises writeMax for big payloads: tiny writes of a big
// payload would take millions of system calls, so the largest write is
// at least a 4096th of what is sent.
func (p *plan) fitWriteMax() {
	for p.writeMax < writeMaxes[len(writeMaxes)-1] && int64(p.writeMax)*4096 < max(p.up, p.down) {
		p.writeMax *= 4
	}
}
