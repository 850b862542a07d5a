using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Vism.Native;
using Vism.Mmio;

namespace Vism.Transport.Mmio.Tests;

/// <summary>A bare protocol peer for tests that need to send what a well-behaved VMM never would.</summary>
internal sealed class RawVmm : IDisposable
{
    private readonly UnixSocket _socket;
    private uint _nextId = 100;

    private RawVmm(UnixSocket socket) => _socket = socket;

    public static RawVmm Connect(string path) => new(UnixSocket.Connect(path));

    public uint Send(MmioMessageType type, byte[] payload, MmioMessageFlags flags = MmioMessageFlags.None, params SafeHandle[] fds)
    {
        uint id = ++_nextId;
        _socket.Send(MmioFrame.Build(type, flags, id, payload), fds);
        return id;
    }

    public void SendRaw(byte[] bytes) => _socket.Send(bytes);

    /// <summary>The next message (generous timeout); throws when the device closed the connection.</summary>
    public (MmioHeader Header, byte[] Payload) Receive(List<SafeFileHandle>? fds = null)
    {
        if (!_socket.WaitReadable(20_000)) throw new TimeoutException("the device sent nothing");
        return MmioFrame.Receive(_socket, fds) ?? throw new EndOfStreamException("the device closed the connection");
    }

    /// <summary>Whether the device closed the connection (after draining anything it sent first).</summary>
    public bool IsClosedByDevice()
    {
        var buffer = new byte[4096];
        while (true)
        {
            if (!_socket.WaitReadable(20_000)) return false;
            try
            {
                int n = _socket.Receive(buffer, null);
                if (n == 0) return true;
            }
            catch (PosixException)
            {
                return true; // ECONNRESET
            }
        }
    }

    /// <summary>Reads and drops whatever the device has sent (descriptors closed).</summary>
    /// <returns>False when the device closed the connection.</returns>
    public bool Drain()
    {
        try
        {
            while (_socket.WaitReadable(0))
                if (MmioFrame.Receive(_socket, null) is null) return false;
            return true;
        }
        catch (Exception ex) when (ex is PosixException or EndOfStreamException or InvalidDataException)
        {
            return false;
        }
    }

    public (MmioHeader Header, byte[] Payload) Call(MmioMessageType type, byte[] payload, MmioMessageFlags flags = MmioMessageFlags.None, params SafeHandle[] fds)
    {
        uint id = Send(type, payload, flags, fds);
        var reply = Receive();
        Assert.True(reply.Header.IsReply, $"expected a reply to {type}, got {reply.Header.Type}");
        Assert.Equal(id, reply.Header.Id);
        Assert.Equal(type, reply.Header.Type);
        return reply;
    }

    public HelloReply Hello()
    {
        var (h, p) = Call(MmioMessageType.Hello, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode());
        Assert.Equal(MmioStatus.Ok, h.Status);
        Assert.True(HelloReply.TryDecode(p, out HelloReply? reply));
        return reply!;
    }

    public void Dispose() => _socket.Dispose();
}
