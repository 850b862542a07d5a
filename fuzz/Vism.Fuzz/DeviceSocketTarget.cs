using System.Runtime.InteropServices;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Core;
using Vism.Native;

namespace Vism.Fuzz;

/// <summary>
/// A target that is a VMM or frontend talking to Core's ISM device through a real transport on a
/// real loop and Unix socket. Each input is one connection: <see cref="Greet"/> (the handshake the
/// fuzzer need not find), the input played as the peer's byte stream (<see cref="SocketFeed"/>
/// layout; descriptors chosen by <see cref="Descriptor"/>), the sending side shut, and every reply
/// read by <see cref="Drain"/> until the device closes. Rules: the device answers and closes (no
/// hang), nothing escapes to its loop, it never fails internally, and the next peer is served.
/// </summary>
internal abstract class DeviceSocketTarget : IFuzzTarget
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vism-fuzz").FullName;

    protected DeviceSocketTarget(string name)
    {
        Device = Rig.AddDevice(name);
        Host = new HostDescription { Gid = Rig.Host.Gid, StateDirectory = _dir, SocketDirectory = _dir };
    }

    protected Rig Rig { get; } = new();

    protected IsmDevice Device { get; }

    protected HostDescription Host { get; }

    /// <summary>The socket the transport listens on.</summary>
    protected abstract string Endpoint { get; }

    /// <summary>Whether the transport still holds a connection.</summary>
    protected abstract bool Connected { get; }

    /// <summary>Starts <paramref name="transport"/> for the device on its loop.</summary>
    protected void Start(ITransport transport) =>
        Device.Loop.InvokeAsync(() => transport.Start(Device)).GetAwaiter().GetResult();

    /// <summary>The handshake sent before the input.</summary>
    protected abstract void Greet(UnixSocket peer);

    /// <summary>The descriptor sent with piece <paramref name="piece"/> of the stream.</summary>
    protected abstract SafeHandle Descriptor(int piece);

    /// <summary>Reads and checks every reply until the device closes the connection.</summary>
    protected abstract void Drain(UnixSocket peer);

    /// <summary>Extra checks on the stream itself (decoders), before it is played.</summary>
    protected virtual void Inspect(ReadOnlySpan<byte> stream)
    {
    }

    public void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 2) return;
        Inspect(input[2..]);
        using (UnixSocket peer = UnixSocket.Connect(Endpoint))
        {
            Greet(peer);
            Play(peer, input);
            try
            {
                Drain(peer);
            }
            catch (PosixException ex) when (ex.Errno == Errno.ECONNRESET)
            {
                // The device closed the connection with some of the stream unread (it refused the peer).
            }
        }
        long deadline = Environment.TickCount64 + 30_000;
        while (Connected)
        {
            if (Environment.TickCount64 > deadline) throw new FuzzFinding("the device kept a closed connection");
            Thread.Sleep(0);
        }
        Rig.Settle();
        Rig.Check();
    }

    /// <summary>Sends the input's stream in its pieces, then shuts the sending side: the device
    /// reads to the end and closes.</summary>
    private void Play(UnixSocket peer, ReadOnlySpan<byte> input)
    {
        int chunk = input[0] == 0 ? SocketFeed.MaxStream : input[0];
        byte fdMask = input[1];
        ReadOnlySpan<byte> stream = input[2..];
        if (stream.Length > SocketFeed.MaxStream) stream = stream[..SocketFeed.MaxStream];
        try
        {
            for (int i = 0, at = 0; at < stream.Length; i++)
            {
                int length = SocketFeed.Length(i, chunk, stream.Length - at);
                ReadOnlySpan<byte> piece = stream.Slice(at, length);
                at += length;
                if (i < 8 && (fdMask & (1 << i)) != 0) peer.Send(piece, [Descriptor(i)]);
                else peer.Send(piece);
            }
        }
        catch (PosixException)
        {
            // The device refused the peer and closed the connection: allowed.
        }
        Syscall.shutdown(Fd.Raw(peer.Handle), ShutdownOption.SHUT_WR);
    }

    protected virtual void DisposeTransport()
    {
    }

    public void Dispose()
    {
        DisposeTransport();
        Rig.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
