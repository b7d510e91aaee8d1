package clientauth

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

func mustSCRAMSecret(t testing.TB, password string) string {
	t.Helper()
	s, err := NewSCRAMSecret(password)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// xdgSecret formats, in PostgreSQL's form, the stored credentials that the
// xdg-go client derives for password: an independent check of the
// package's own derivation.
func xdgSecret(t testing.TB, password string, salt []byte, iters int) string {
	t.Helper()
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := cl.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: iters})
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iters) + ":" + b64(salt) + "$" + b64(sc.StoredKey) + ":" + b64(sc.ServerKey)
}

// scramClient is a PostgreSQL-style client built on xdg-go's SCRAM client:
// empty user name in the client-first message, no channel binding unless
// conv says otherwise.
func scramClient(t *testing.T, conv *scram.ClientConversation) client {
	return func(m pgproto3.BackendMessage) ([]byte, error) {
		switch m := m.(type) {
		case *pgproto3.AuthenticationSASL:
			if !slices.Equal(m.AuthMechanisms, []string{"SCRAM-SHA-256"}) {
				t.Errorf("mechanisms = %q, want only SCRAM-SHA-256", m.AuthMechanisms)
			}
			first, err := conv.Step("")
			if err != nil {
				t.Fatalf("client first: %v", err)
			}
			if !strings.Contains(first, ",n=,r=") {
				t.Fatalf("client-first %q does not carry PostgreSQL's empty user name", first)
			}
			return frame(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)}), nil
		case *pgproto3.AuthenticationSASLContinue:
			final, err := conv.Step(string(m.Data))
			if err != nil {
				t.Fatalf("client final: %v", err)
			}
			return frame(t, &pgproto3.SASLResponse{Data: []byte(final)}), nil
		default:
			t.Fatalf("server sent %T during SCRAM", m)
			return nil, nil
		}
	}
}

func newClientConv(t *testing.T, password string) *scram.ClientConversation {
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	return cl.NewConversation()
}

// checkServerFinal has the client verify the server's signature.
func checkServerFinal(t *testing.T, c *fakeConn, conv *scram.ClientConversation) {
	t.Helper()
	final, ok := c.next().(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		t.Fatal("server sent no AuthenticationSASLFinal")
	}
	if _, err := conv.Step(string(final.Data)); err != nil || !conv.Valid() {
		t.Fatalf("client rejects server signature: %v", err)
	}
	if c.next() != nil {
		t.Error("server sent something after SASL final: AuthenticationOk is the caller's")
	}
}

func TestSCRAM(t *testing.T) {
	salt := []byte("0123456789abcdef")
	store := MapStore{
		"plain":  {Password: "secret"},
		"secret": {SCRAM: mustSCRAMSecret(t, "secret")},
		"xdg":    {SCRAM: xdgSecret(t, "secret", salt, 4096)},
		"both":   {Password: "secret", SCRAM: xdgSecret(t, "secret", salt, 4096)},
		"md5":    {MD5: MD5Hash("md5", "secret")},
		"broken": {SCRAM: "SCRAM-SHA-256$4096:bad"},
		"none":   {},
	}
	a := NewAuthenticator(store)

	for _, user := range []string{"plain", "secret", "xdg", "both"} {
		t.Run(user, func(t *testing.T) {
			conv := newClientConv(t, "secret")
			c := newFakeConn(t, scramClient(t, conv))
			cred, err := a.Authenticate(c, SCRAMSHA256, user)
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if cred.User != user {
				t.Errorf("cred.User = %q, want %q", cred.User, user)
			}
			checkServerFinal(t, c, conv)
		})
	}

	wrong := newFakeConn(t, scramClient(t, newClientConv(t, "wrong")))
	_, err := a.Authenticate(wrong, SCRAMSHA256, "secret")
	wantAuthFailed(t, err, "secret", ErrPasswordMismatch)
	if len(wrong.sent) != 2 {
		t.Fatalf("wrong password exchange sent %v, want SASL and SASL continue", wrong.sent)
	}

	for _, user := range []string{"nobody", "md5", "broken", "none"} {
		c := newFakeConn(t, scramClient(t, newClientConv(t, "secret")))
		_, err := a.Authenticate(c, SCRAMSHA256, user)
		want := ErrNoUsableSecret
		if user == "nobody" {
			want = ErrUnknownUser
		}
		wantAuthFailed(t, err, user, want)
		if !slices.Equal(c.sent, wrong.sent) {
			t.Errorf("%s: exchange %v differs from wrong password %v", user, c.sent, wrong.sent)
		}
	}
}

// TestSCRAMClientSupportsChannelBinding: a client that could bind ("y"
// flag) but sees no -PLUS mechanism is fine.
func TestSCRAMClientSupportsChannelBinding(t *testing.T) {
	a := NewAuthenticator(MapStore{"u": {Password: "secret"}})
	cl, err := scram.SHA256.NewClient("", "secret", "")
	if err != nil {
		t.Fatal(err)
	}
	conv := cl.NewConversationAdvertisingChannelBinding()
	c := newFakeConn(t, scramClient(t, conv))
	if _, err := a.Authenticate(c, SCRAMSHA256, "u"); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	checkServerFinal(t, c, conv)
}

// TestSCRAMRFC7677 replays the SCRAM-SHA-256 example of RFC 7677 section 3
// against a secret derived by xdg-go, with the server nonce pinned.
func TestSCRAMRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	a := NewAuthenticator(MapStore{"user": {SCRAM: xdgSecret(t, "pencil", salt, 4096)}})
	a.scramNonce = func() string { return "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0" }

	const (
		clientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
		serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	c := newFakeConn(t, func(m pgproto3.BackendMessage) ([]byte, error) {
		switch m := m.(type) {
		case *pgproto3.AuthenticationSASL:
			return frame(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(clientFirst)}), nil
		case *pgproto3.AuthenticationSASLContinue:
			if string(m.Data) != serverFirst {
				t.Errorf("server-first = %q, want %q", m.Data, serverFirst)
			}
			return frame(t, &pgproto3.SASLResponse{Data: []byte(clientFinal)}), nil
		}
		t.Fatalf("unexpected %T", m)
		return nil, nil
	})
	if _, err := a.Authenticate(c, SCRAMSHA256, "user"); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	final, ok := c.next().(*pgproto3.AuthenticationSASLFinal)
	if !ok || string(final.Data) != serverFinal {
		t.Fatalf("server-final = %v, want %q", final, serverFinal)
	}
}

func TestSCRAMKeysMatchXDG(t *testing.T) {
	salt := []byte("some salt 16 byt")
	for _, pw := range []string{"secret", "p\u00e4ss w\u00f6rd", "I\u00adX"} { // the last one SASLprep maps to "IX"
		sc, err := scramKeys(pw, salt, 4096)
		if err != nil {
			t.Fatal(err)
		}
		want, err := parseSCRAMSecret(xdgSecret(t, pw, salt, 4096))
		if err != nil {
			t.Fatal(err)
		}
		if string(sc.StoredKey) != string(want.StoredKey) || string(sc.ServerKey) != string(want.ServerKey) {
			t.Errorf("%q: keys differ from xdg-go's", pw)
		}
	}
}

// serverFirstSalt runs a SCRAM exchange up to the server-first message and
// returns its salt.
func serverFirstSalt(t *testing.T, a *Authenticator, user string) string {
	t.Helper()
	var salt string
	conv := newClientConv(t, "x")
	inner := scramClient(t, conv)
	c := newFakeConn(t, func(m pgproto3.BackendMessage) ([]byte, error) {
		if m, ok := m.(*pgproto3.AuthenticationSASLContinue); ok {
			for _, f := range strings.Split(string(m.Data), ",") {
				if s, ok := strings.CutPrefix(f, "s="); ok {
					salt = s
				}
			}
			return nil, io.EOF
		}
		return inner(m)
	})
	if _, err := a.Authenticate(c, SCRAMSHA256, user); !errors.Is(err, io.EOF) {
		t.Fatalf("err = %v, want io.EOF", err)
	}
	return salt
}

// TestSCRAMSalt: an unknown user gets the same salt on every attempt, as a
// real user does, and nothing ties it to another user or process.
func TestSCRAMSalt(t *testing.T) {
	secret := xdgSecret(t, "secret", []byte("0123456789abcdef"), 4096)
	a := NewAuthenticator(MapStore{"plain": {Password: "p"}, "secret": {SCRAM: secret}})
	for _, user := range []string{"plain", "nobody"} {
		if s1, s2 := serverFirstSalt(t, a, user), serverFirstSalt(t, a, user); s1 != s2 || s1 == "" {
			t.Errorf("%s: salts %q then %q, want one stable salt", user, s1, s2)
		}
	}
	if got, want := serverFirstSalt(t, a, "secret"), base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")); got != want {
		t.Errorf("secret user: salt %q, want the secret's %q", got, want)
	}
	if serverFirstSalt(t, a, "nobody") == serverFirstSalt(t, a, "nobody2") {
		t.Error("two unknown users share a salt")
	}
	if serverFirstSalt(t, a, "nobody") == serverFirstSalt(t, NewAuthenticator(nil), "nobody") {
		t.Error("two Authenticators derive the same salt")
	}
}

// initFrame builds a SASLInitialResponse by hand, with a declared data
// length that may lie.
func initFrame(mech string, declared int32, data string) []byte {
	body := append([]byte(mech), 0)
	body = binary.BigEndian.AppendUint32(body, uint32(declared))
	return rawFrame('p', append(body, data...))
}

// initMsg builds a well-framed SCRAM-SHA-256 SASLInitialResponse.
func initMsg(data string) []byte { return initFrame("SCRAM-SHA-256", int32(len(data)), data) }

func TestSCRAMMalformed(t *testing.T) {
	const first = "n,,n=,r=clientnonce"
	ok := initMsg(first)
	a := NewAuthenticator(MapStore{"u": {Password: "secret"}})
	a.scramNonce = func() string { return "servernonce" }

	for _, tc := range []struct {
		name    string
		frames  [][]byte
		message string // "" for any
	}{
		{"query instead of initial response", [][]byte{rawFrame('Q', []byte("select 1\x00"))}, ""},
		{"PLUS mechanism", [][]byte{initFrame("SCRAM-SHA-256-PLUS", int32(len(first)), first)}, "client selected an invalid SASL authentication mechanism"},
		{"unknown mechanism", [][]byte{initFrame("PLAIN", 4, "\x00u\x00p")}, "client selected an invalid SASL authentication mechanism"},
		{"no mechanism terminator", [][]byte{rawFrame('p', []byte("SCRAM-SHA-256"))}, "invalid message format"},
		{"no data length", [][]byte{rawFrame('p', []byte("SCRAM-SHA-256\x00\x00\x00"))}, "invalid message format"},
		{"data length lies", [][]byte{initFrame("SCRAM-SHA-256", 100, first)}, "invalid message format"},
		{"no data", [][]byte{initFrame("SCRAM-SHA-256", -1, "")}, "malformed SCRAM message"},
		{"garbage first", [][]byte{initMsg("hello")}, "malformed SCRAM message"},
		{"channel binding data", [][]byte{initMsg("p=tls-server-end-point,,n=,r=clientnonce")}, "malformed SCRAM message"},
		{"extension", [][]byte{initMsg("n,,m=ext,n=,r=clientnonce")}, "malformed SCRAM message"},
		{"authzid", [][]byte{initMsg("n,a=bob,n=,r=clientnonce")}, "client uses authorization identity, but it is not supported"},
		{"query instead of final", [][]byte{ok, rawFrame('Q', []byte("select 1\x00"))}, ""},
		{"garbage final", [][]byte{ok, rawFrame('p', []byte("hello"))}, "malformed SCRAM message"},
		{"wrong nonce", [][]byte{ok, rawFrame('p', []byte("c=biws,r=clientnonceX,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))}, "malformed SCRAM message"},
		{"short proof", [][]byte{ok, rawFrame('p', []byte("c=biws,r=clientnonceservernonce,p=AAAA"))}, "malformed SCRAM message"},
		{"channel binding mismatch", [][]byte{ok, rawFrame('p', []byte("c=eSws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))}, "malformed SCRAM message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(newFakeConn(t, script(tc.frames...)), SCRAMSHA256, "u")
			ae := wantError(t, err, CodeProtocolViolation)
			if tc.message != "" && ae.Message != tc.message {
				t.Errorf("message = %q, want %q", ae.Message, tc.message)
			}
			if !errors.Is(err, ErrProtocolViolation) {
				t.Errorf("errors.Is(ErrProtocolViolation) = false: %v", err)
			}
		})
	}

	// A well-formed final message with a wrong proof is a wrong password.
	_, err := a.Authenticate(newFakeConn(t, script(ok, rawFrame('p', []byte("c=biws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")))), SCRAMSHA256, "u")
	wantAuthFailed(t, err, "u", ErrPasswordMismatch)
}

func TestSCRAMIOError(t *testing.T) {
	a := NewAuthenticator(MapStore{"u": {Password: "p"}})
	_, err := a.Authenticate(newFakeConn(t, script()), SCRAMSHA256, "u")
	var ae *Error
	if !errors.Is(err, io.EOF) || errors.As(err, &ae) {
		t.Fatalf("err = %v, want wrapped io.EOF, not *Error", err)
	}
}

func TestParseSCRAMSecret(t *testing.T) {
	good := xdgSecret(t, "secret", []byte("0123456789abcdef"), 4096)
	sc, err := parseSCRAMSecret(good)
	if err != nil || sc.Iters != 4096 || sc.Salt != "0123456789abcdef" {
		t.Fatalf("parseSCRAMSecret(%q) = %+v, %v", good, sc, err)
	}
	salt := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	keys := good[strings.LastIndexByte(good, '$')+1:]
	stored, server, _ := strings.Cut(keys, ":")
	for _, bad := range []string{
		"",
		"SCRAM-SHA-1$4096:" + salt + "$" + keys,
		"SCRAM-SHA-256$4096:" + salt,
		"SCRAM-SHA-256$0:" + salt + "$" + keys,
		"SCRAM-SHA-256$x:" + salt + "$" + keys,
		"SCRAM-SHA-256$4096" + salt + "$" + keys,
		"SCRAM-SHA-256$4096:!!$" + keys,
		"SCRAM-SHA-256$4096:$" + keys,
		"SCRAM-SHA-256$4096:" + salt + "$AAAA:" + server,
		"SCRAM-SHA-256$4096:" + salt + "$" + stored + server,
		"SCRAM-SHA-256$4096:" + salt + "$" + stored + ":",
	} {
		if _, err := parseSCRAMSecret(bad); err == nil {
			t.Errorf("parseSCRAMSecret(%q) = nil error", bad)
		}
	}
}

func FuzzSCRAMExchange(f *testing.F) {
	f.Add([]byte("n,,n=,r=clientnonce"), []byte("c=biws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	f.Add([]byte("y,,n=,r=a"), []byte("c=eSws,r=aservernonce,x=1,p=AAAA"))
	f.Add([]byte("p=tls-unique,a=x,n=u=2C,r=r"), []byte(",,,"))
	f.Add([]byte("n,,n==,r="), []byte(""))
	a := NewAuthenticator(MapStore{"u": {Password: "secret"}})
	a.scramNonce = func() string { return "servernonce" }
	f.Fuzz(func(t *testing.T, first, final []byte) {
		c := newFakeConn(t, script(initMsg(string(first)), rawFrame('p', final)))
		_, err := a.Authenticate(c, SCRAMSHA256, "u")
		var ae *Error
		if !errors.As(err, &ae) {
			t.Fatalf("err = %v, want *Error", err)
		}
	})
}
