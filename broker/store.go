package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/mdm-authority/mdm/protocol"
)

// The store's buckets. Records are CBOR with field names as keys, so that
// fields can be added without migrating the file.
var (
	bucketMeta     = []byte("meta")     // "tenant" → Tenant, "token" → enrollment token hash
	bucketDevices  = []byte("devices")  // device id → Device
	bucketProfiles = []byte("profiles") // authority, type, name → Profile
	bucketCommands = []byte("commands") // device id, 0, command id → Command
	bucketPushes   = []byte("pushes")   // due time (8 bytes, big endian ns), device id → nothing
)

var (
	keyTenant   = []byte("tenant")
	keyToken    = []byte("token")
	keyTenantID = []byte("tenant_id")
)

// ErrNotFound is returned (wrapped) for a record that does not exist.
var ErrNotFound = errors.New("not found")

var (
	storeEnc = func() cbor.EncMode {
		opts := cbor.CoreDetEncOptions()
		opts.Time = cbor.TimeRFC3339Nano
		em, err := opts.EncMode()
		if err != nil {
			panic(err)
		}
		return em
	}()
	storeDec = func() cbor.DecMode {
		dm, err := cbor.DecOptions{
			MaxNestedLevels: 16,
			IndefLength:     cbor.IndefLengthForbidden,
		}.DecMode()
		if err != nil {
			panic(err)
		}
		return dm
	}()
)

// Store is the service's durable state in one bbolt file: every committed
// transaction survives a crash at any point.
type Store struct {
	db    *bolt.DB
	group *groupCommit // Volatile's batching; nil for bbolt's own
}

// OpenStore opens or creates the store file at path (mode 0600).
func OpenStore(path string) (*Store, error) {
	// The freelist is rebuilt at open instead of written at every commit,
	// as etcd runs bbolt: commits write less, and durability is the same.
	// The database's statistics (DB.Stats) are never read, and keeping
	// them costs every transaction a shared lock and counters.
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        2 * time.Second,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		NoStatistics:   true,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: another mdm-broker is using it; stop it or use another --data directory", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketDevices, bucketProfiles, bucketCommands, bucketPushes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// Check-ins arrive from many devices at once: a batch gathers up to
	// 4096 of them behind one commit (two fsyncs). Its callers wait up to
	// 10 ms for company; shorter waits made smaller batches and more
	// commits, and cost throughput (BenchmarkCheckIn).
	db.MaxBatchSize = 4096
	db.MaxBatchDelay = 10 * time.Millisecond
	return &Store{db: db}, nil
}

// Volatile trades durability for speed, for a store thrown away with its
// process, such as the simulator's: commits are not synced to disk, and a
// batch does not wait for company, since a simulated device waits for
// each answer in real time: writes that arrive while a commit runs share
// the next one (groupCommit).
// Call it before the store is used.
func (s *Store) Volatile() {
	s.db.NoSync = true
	s.db.MaxBatchDelay = 0
	s.group = &groupCommit{}
}

// ClaimTenant binds the store to a tenant id on first use and refuses any
// other later: device certificates name the tenant, so serving the store
// under another id would lock every device out.
func (s *Store) ClaimTenant(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if old := b.Get(keyTenantID); old != nil {
			if string(old) != id {
				return fmt.Errorf("this data directory belongs to tenant %q, not %q: pass --tenant %s, or use another --data directory", old, id, old)
			}
			return nil
		}
		return b.Put(keyTenantID, []byte(id))
	})
}

// Close closes the store file.
func (s *Store) Close() error { return s.db.Close() }

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Update runs fn in a read-write transaction, committed durably when fn
// returns nil.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Batch runs fn in a read-write transaction shared with concurrent Batch
// calls, which makes many small durable writes cheap. fn may run more
// than once: it must act only on the transaction, or reset anything else
// it sets at its start.
func (s *Store) Batch(fn func(*Tx) error) error {
	if s.group != nil {
		return s.group.do(s.db, fn)
	}
	return s.db.Batch(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// groupCommit batches without waiting: the first caller commits what has
// gathered, and the calls that arrive meanwhile share the next commit.
// With no fsync to amortise (Volatile), a timer would only add latency;
// this takes whatever concurrency there is.
type groupCommit struct {
	mu      sync.Mutex
	pending []groupCall
	leading bool
}

type groupCall struct {
	fn  func(*Tx) error
	err chan error
}

// errSolo tells a call whose function failed in a shared commit to run
// alone, as bbolt's Batch does.
var errSolo = errors.New("run alone")

func (g *groupCommit) do(db *bolt.DB, fn func(*Tx) error) error {
	c := groupCall{fn: fn, err: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, c)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if lead {
		// Let the callers that are ready to run get here first: on a
		// machine with few cores, they would otherwise start only once
		// this commit is done, and every commit would carry one call.
		runtime.Gosched()
		for {
			g.mu.Lock()
			calls := g.pending
			g.pending = nil
			if len(calls) == 0 {
				g.leading = false
				g.mu.Unlock()
				break
			}
			g.mu.Unlock()
			commitGroup(db, calls)
		}
	}
	err := <-c.err
	if err == errSolo {
		err = db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
	}
	return err
}

// commitGroup runs calls in one transaction; a call that fails is taken
// out and told to run alone, and the rest run again.
func commitGroup(db *bolt.DB, calls []groupCall) {
	for len(calls) > 0 {
		failed := -1
		err := db.Update(func(tx *bolt.Tx) error {
			for i, c := range calls {
				if err := c.fn(&Tx{tx}); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			calls[failed].err <- errSolo
			calls = append(calls[:failed:failed], calls[failed+1:]...)
			continue
		}
		for _, c := range calls {
			c.err <- err
		}
		return
	}
}

// Tx is a store transaction with typed accessors.
type Tx struct {
	tx *bolt.Tx
}

func (tx *Tx) get(bucket, key []byte, v any) error {
	b := tx.tx.Bucket(bucket).Get(key)
	if b == nil {
		return ErrNotFound
	}
	if err := storeDec.Unmarshal(b, v); err != nil {
		return fmt.Errorf("read %s record %q: %w", bucket, key, err)
	}
	return nil
}

func (tx *Tx) put(bucket, key []byte, v any) error {
	b, err := storeEnc.Marshal(v)
	if err != nil {
		return fmt.Errorf("write %s record %q: %w", bucket, key, err)
	}
	return tx.tx.Bucket(bucket).Put(key, b)
}

// Tenant returns the tenant's authority state; a new store has the zero
// state (authority unknown).
func (tx *Tx) Tenant() (*Tenant, error) {
	var t Tenant
	if err := tx.get(bucketMeta, keyTenant, &t); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	return &t, nil
}

// PutTenant stores the tenant's authority state.
func (tx *Tx) PutTenant(t *Tenant) error { return tx.put(bucketMeta, keyTenant, t) }

// TokenHash returns the hash of the enrollment token, or nil if none was
// created.
func (tx *Tx) TokenHash() []byte {
	return bytes.Clone(tx.tx.Bucket(bucketMeta).Get(keyToken))
}

// PutTokenHash stores the hash of the enrollment token.
func (tx *Tx) PutTokenHash(h []byte) error { return tx.tx.Bucket(bucketMeta).Put(keyToken, h) }

// Device returns the device with the id, or an error wrapping ErrNotFound.
func (tx *Tx) Device(id string) (*Device, error) {
	var d Device
	if err := tx.get(bucketDevices, []byte(id), &d); err != nil {
		return nil, fmt.Errorf("device %s: %w", id, err)
	}
	return &d, nil
}

// decodeDevice decodes a stored device record.
func decodeDevice(v []byte) (*Device, error) {
	var d Device
	if err := storeDec.Unmarshal(v, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// A deviceRead is a device record read and decoded outside a write
// transaction. Decoding it, with finding and copying it, is the work of
// reading a record, and it can run on every core, while write transactions
// run one at a time: a check-in or a fan-out that reads its devices first
// leaves its write transaction less to do. The transaction takes the
// decoded record only while the stored one is still the record it was
// decoded from (Tx.deviceFrom).
type deviceRead struct {
	raw []byte  // a copy of the stored record
	d   *Device // decoded from raw; nil once taken
}

// readDevice copies and decodes a device's record, for a write
// transaction to take later: nil when there is none. A record that does
// not decode leaves d nil, for the write transaction to report.
func (tx *Tx) readDevice(id string) *deviceRead {
	v := tx.tx.Bucket(bucketDevices).Get([]byte(id))
	if v == nil {
		return nil
	}
	r := &deviceRead{raw: bytes.Clone(v)}
	if d, err := decodeDevice(r.raw); err == nil {
		r.d = d
	}
	return r
}

// readDevice reads and decodes a device's record outside a write
// transaction. It returns nil when the record cannot be read: the write
// transaction then reads it again and reports why.
func (s *Store) readDevice(id string) *deviceRead {
	var r *deviceRead
	_ = s.View(func(tx *Tx) error { r = tx.readDevice(id); return nil })
	return r
}

// inShares calls fn on consecutive shares [lo, hi) of n items, at once,
// on up to one goroutine per core, each share at least minShare items
// long; with fewer items it calls fn once on the caller's goroutine.
func inShares(n, minShare int, fn func(lo, hi int)) {
	k := min(runtime.GOMAXPROCS(0), n/minShare)
	if k < 2 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	var wg sync.WaitGroup
	for i := range k {
		wg.Go(func() { fn(n*i/k, n*(i+1)/k) })
	}
	wg.Wait()
}

// minShare is the fewest items (records to decode, messages to publish)
// worth a goroutine of their own.
const minShare = 64

// deviceFrom is Device, taking r's decoded record when the stored record
// is unchanged since r was read. It takes it once: the caller changes the
// record, and a batch may run its function again. r may be nil.
func (tx *Tx) deviceFrom(id string, r *deviceRead) (*Device, error) {
	if r != nil && r.d != nil {
		if v := tx.tx.Bucket(bucketDevices).Get([]byte(id)); v != nil && bytes.Equal(v, r.raw) {
			d := r.d
			r.d = nil
			return d, nil
		}
	}
	return tx.Device(id)
}

// PutDevice stores a device record.
func (tx *Tx) PutDevice(d *Device) error { return tx.put(bucketDevices, []byte(d.ID), d) }

// DeleteDevice removes a device record and its commands. Its queued push,
// if any, is left behind, and dropped when it comes due.
func (tx *Tx) DeleteDevice(d *Device) error {
	c := tx.tx.Bucket(bucketCommands).Cursor()
	prefix := commandPrefix(d.ID)
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return tx.tx.Bucket(bucketDevices).Delete([]byte(d.ID))
}

// Devices calls fn for every device, in id order, until fn returns an
// error.
func (tx *Tx) Devices(fn func(*Device) error) error {
	return tx.tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		d, err := decodeDevice(v)
		if err != nil {
			return fmt.Errorf("read device %q: %w", k, err)
		}
		return fn(d)
	})
}

func profileKey(a protocol.Authority, typ protocol.ProfileType, name string) []byte {
	return append([]byte{byte(a), byte(typ)}, name...)
}

// Profiles returns every profile of every authority's catalog.
func (tx *Tx) Profiles() ([]Profile, error) {
	var out []Profile
	err := tx.tx.Bucket(bucketProfiles).ForEach(func(k, v []byte) error {
		var p Profile
		if err := storeDec.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("read profile %q: %w", k, err)
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// Profile returns one catalog entry, or an error wrapping ErrNotFound.
func (tx *Tx) Profile(a protocol.Authority, typ protocol.ProfileType, name string) (*Profile, error) {
	var p Profile
	if err := tx.get(bucketProfiles, profileKey(a, typ, name), &p); err != nil {
		return nil, fmt.Errorf("%s profile %s %q: %w", a, typ, name, err)
	}
	return &p, nil
}

// PutProfile stores a catalog entry.
func (tx *Tx) PutProfile(p *Profile) error {
	return tx.put(bucketProfiles, profileKey(p.Authority, p.Type, p.Name), p)
}

// DeleteProfile removes a catalog entry.
func (tx *Tx) DeleteProfile(a protocol.Authority, typ protocol.ProfileType, name string) error {
	return tx.tx.Bucket(bucketProfiles).Delete(profileKey(a, typ, name))
}

func commandPrefix(device string) []byte { return append([]byte(device), 0) }

// Commands returns the commands of a device in id order.
func (tx *Tx) Commands(device string) ([]*Command, error) {
	var out []*Command
	c := tx.tx.Bucket(bucketCommands).Cursor()
	prefix := commandPrefix(device)
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var cmd Command
		if err := storeDec.Unmarshal(v, &cmd); err != nil {
			return nil, fmt.Errorf("read command %q: %w", k, err)
		}
		out = append(out, &cmd)
	}
	return out, nil
}

// Command returns one command of a device, or an error wrapping
// ErrNotFound.
func (tx *Tx) Command(device, id string) (*Command, error) {
	var c Command
	if err := tx.get(bucketCommands, append(commandPrefix(device), id...), &c); err != nil {
		return nil, fmt.Errorf("command %s of device %s: %w", id, device, err)
	}
	return &c, nil
}

// PutCommand stores a command.
func (tx *Tx) PutCommand(c *Command) error {
	return tx.put(bucketCommands, append(commandPrefix(c.Device), c.ID...), c)
}

// The push queue holds an entry per push owed, keyed by when it is due and
// the device, so that due pushes are found without reading every device.
// An entry's value holds the generation of the device's push it belongs
// to and how often it was sent. An entry stays current while its device
// is owed the push of that generation; a check-in, a newer push or the
// device's removal leaves it behind, and it is dropped when it comes due
// (DuePushes), unsent and uncounted. Leaving it keeps check-ins off the
// queue, and sends off the device records: with both, a fan-out's commit
// rewrote the record of every device it pushed.

// pushEntryVersion is the first byte of an entry's value. Entries without
// a value were queued by versions that kept the sends in the device
// record (PushState.Attempts and NextAt); they are read as before.
const pushEntryVersion = 1

// A pushEntry is one entry of the push queue.
type pushEntry struct {
	key    []byte
	at     int64 // due, in Unix nanoseconds
	device string
	gen    uint64
	sends  int
	legacy bool // no value: the device record has the sends
}

func pushKey(at int64, device string) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(device)), uint64(at))
	return append(k, device...)
}

// readPushEntry reads a queue entry; false for a key too short to be one.
func readPushEntry(k, v []byte) (pushEntry, bool) {
	if len(k) <= 8 {
		return pushEntry{}, false
	}
	e := pushEntry{key: bytes.Clone(k), at: int64(binary.BigEndian.Uint64(k)), device: string(k[8:])}
	if len(v) == 0 || v[0] != pushEntryVersion {
		e.legacy = true
		return e, true
	}
	gen, n := binary.Uvarint(v[1:])
	sends, m := binary.Uvarint(v[1+max(n, 0):])
	if n <= 0 || m <= 0 || sends > 1<<16 {
		e.legacy = true // unreadable: judged by the device record
		return e, true
	}
	e.gen, e.sends = gen, int(sends)
	return e, true
}

// current reports whether e is the push d is owed now, rather than one
// left behind.
func (e *pushEntry) current(d *Device) bool {
	switch {
	case d == nil || !d.Push.Pending:
		return false
	case e.legacy:
		// Written before generations: by a record of that time too.
		return d.Push.Gen == 0 && d.Push.NextAt.UnixNano() == e.at
	}
	return d.Push.Gen == e.gen
}

// sent is how often e's push was sent: on the entry, or for an entry
// without a value, on d's record.
func (e *pushEntry) sent(d *Device) int {
	if e.legacy {
		return d.Push.Attempts
	}
	return e.sends
}

// queuePush queues the push d is owed (its generation d.Push.Gen), due at
// at and sent sends times so far.
func (tx *Tx) queuePush(d *Device, at time.Time, sends int) error {
	v := binary.AppendUvarint([]byte{pushEntryVersion}, d.Push.Gen)
	v = binary.AppendUvarint(v, uint64(sends))
	return tx.tx.Bucket(bucketPushes).Put(pushKey(at.UnixNano(), d.ID), v)
}

// due yields the queue entries due at now, current or not, oldest first.
func (tx *Tx) due(now time.Time) iter.Seq[pushEntry] { return tx.dueAfter(now, nil) }

// dueAfter is due from the first entry whose key comes after last, which
// need not still be queued; from the first entry when last is nil.
func (tx *Tx) dueAfter(now time.Time, last []byte) iter.Seq[pushEntry] {
	return func(yield func(pushEntry) bool) {
		c := tx.tx.Bucket(bucketPushes).Cursor()
		limit := now.UnixNano()
		var k, v []byte
		if last == nil {
			k, v = c.First()
		} else if k, v = c.Seek(last); bytes.Equal(k, last) {
			k, v = c.Next()
		}
		for ; k != nil; k, v = c.Next() {
			e, ok := readPushEntry(k, v)
			if !ok {
				continue // not an entry; nothing writes one
			}
			if e.at > limit || !yield(e) {
				return
			}
		}
	}
}

// duePushes returns up to max queue entries due at now, current or not,
// oldest first.
func (tx *Tx) duePushes(now time.Time, max int) []pushEntry {
	var es []pushEntry
	if max <= 0 {
		return nil
	}
	for e := range tx.due(now) {
		if es = append(es, e); len(es) == max {
			break
		}
	}
	return es
}

// takeDue yields the queue entries due at now, oldest first, each deleted
// from the queue before it is yielded, reading batch at a time: an entry
// the caller puts back later than now is not yielded again.
func (tx *Tx) takeDue(now time.Time, batch int) iter.Seq2[pushEntry, error] {
	return func(yield func(pushEntry, error) bool) {
		for {
			es := tx.duePushes(now, batch)
			if len(es) == 0 {
				return
			}
			for _, e := range es {
				if err := tx.deletePush(e); err != nil {
					yield(e, err)
					return
				}
				if !yield(e, nil) {
					return
				}
			}
		}
	}
}

// readDuePushes reads into read, by device id, the records of the devices
// of due queue entries, decoded: in rounds, until it has read max entries
// that are current, or every due one. Entries of pushes their devices have
// answered (answeredPushes) are passed over unread, and devices without a
// record get no entry in read. It reports whether any entry is due, and
// the error of a read transaction that could not start.
//
// Each round walks the queue in one read transaction and then reads the
// records on every core (readDevices): finding a record in the devices'
// tree and copying it is, after decoding it, most of the work, and the
// write transaction that follows runs alone. The write transaction takes a
// record only while it is unchanged (Tx.deviceFrom), so the reads need not
// share one snapshot. The walk's transaction is closed before the records
// are read: a writer that grows the file waits for every open read
// transaction and holds off new ones, so a goroutine holding one while it
// waits for others to open theirs could deadlock with it. A round that
// fills on the last due entry is followed by one that finds none.
func (s *Store) readDuePushes(now time.Time, max int, answered *answeredPushes, read map[string]*deviceRead) (bool, error) {
	due, current := false, 0
	var last []byte // the key of the last entry walked
	var round []pushEntry
	var ids []string // the round's devices not read before
	for {
		round, ids = round[:0], ids[:0]
		full := false
		err := s.View(func(tx *Tx) error {
			for e := range tx.dueAfter(now, last) {
				due, last = true, e.key
				if answered.stale(&e) {
					continue
				}
				round = append(round, e)
				if _, seen := read[e.device]; !seen {
					read[e.device] = nil // read below
					ids = append(ids, e.device)
				}
				if len(round) >= max-current {
					full = true
					break
				}
			}
			return nil
		})
		if err != nil {
			return due, err
		}
		for i, r := range s.readDevices(ids) {
			if r != nil {
				read[ids[i]] = r
			} else {
				delete(read, ids[i]) // no record
			}
		}
		for i := range round {
			if r := read[round[i].device]; r != nil && round[i].current(r.d) {
				current++
			}
		}
		if !full || current >= max {
			return due, nil
		}
	}
}

// readDevices reads and decodes the records of the devices ids outside a
// write transaction, in shares on up to one goroutine per core, each in
// its own read transaction. A record that cannot be read (there is none,
// or the transaction could not start) is nil: the write transaction reads
// it again and reports why.
func (s *Store) readDevices(ids []string) []*deviceRead {
	reads := make([]*deviceRead, len(ids))
	inShares(len(ids), minShare, func(lo, hi int) {
		_ = s.View(func(tx *Tx) error {
			for i := lo; i < hi; i++ {
				reads[i] = tx.readDevice(ids[i])
			}
			return nil
		})
	})
	return reads
}

// answeredPushes remembers, by device, the generation of the last push
// the device answered with a check-in, from the check-in's commit until
// the fan-out meets that push's queue entry: the fan-out then drops the
// entry, left behind, without reading and decoding the device's record.
// After a migration's first pass, such entries are most of what comes due
// when the first retries do. A device's generations only grow
// (PushState.owe), so an entry of the answered generation, or of an older
// one, is not current (device ids are never reused: a new enrolment is a
// new id). Only a committed check-in adds to it; it starts empty, and an
// entry it does not know is judged by the device record, as always. It
// holds at most one generation a device, from the answer until that
// push's entry comes due.
type answeredPushes struct {
	mu  sync.Mutex
	gen map[string]uint64
}

// add records that device answered its push of generation gen; a
// generation of 0 (a record from before generations) is not recorded.
func (a *answeredPushes) add(device string, gen uint64) {
	if gen == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen == nil {
		a.gen = map[string]uint64{}
	}
	a.gen[device] = max(a.gen[device], gen)
}

// stale reports whether e belongs to a push its device has answered, or
// to an older one.
func (a *answeredPushes) stale(e *pushEntry) bool { return a.judge(e, false) }

// drop is stale, and forgets the device when e is the answered push's own
// entry, which its caller drops from the queue: the device's other
// entries are older.
func (a *answeredPushes) drop(e *pushEntry) bool { return a.judge(e, true) }

// judge is stale, and with forget drop.
func (a *answeredPushes) judge(e *pushEntry, forget bool) bool {
	if e.legacy {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	gen, ok := a.gen[e.device]
	if !ok || e.gen > gen {
		return false
	}
	if forget && e.gen == gen {
		delete(a.gen, e.device)
		if len(a.gen) == 0 {
			a.gen = nil // a map keeps its size: a fleet's worth, after a change
		}
	}
	return true
}

// reset forgets every device.
func (a *answeredPushes) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen = nil
}

// deletePush removes an entry from the queue.
func (tx *Tx) deletePush(e pushEntry) error { return tx.tx.Bucket(bucketPushes).Delete(e.key) }

// pushesOf returns the queue's entries by device: of the device with id
// only, or of every device when id is empty.
func (tx *Tx) pushesOf(id string) map[string][]pushEntry {
	out := map[string][]pushEntry{}
	for e := range tx.due(time.Unix(0, math.MaxInt64)) {
		if id == "" || e.device == id {
			out[e.device] = append(out[e.device], e)
		}
	}
	return out
}

// showPush sets d.Push's Attempts and NextAt, which the device record
// does not keep up, from its current queue entry among es.
func showPush(d *Device, es []pushEntry) {
	for i := range es {
		if es[i].current(d) {
			d.Push.Attempts, d.Push.NextAt = es[i].sent(d), time.Unix(0, es[i].at).UTC()
			return
		}
	}
}
