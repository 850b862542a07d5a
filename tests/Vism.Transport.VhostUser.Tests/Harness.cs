using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.Testing;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>Collects log lines so tests can check that a reason was logged.</summary>
internal sealed class ListLogger<T> : ILogger<T>
{
    public ConcurrentQueue<(LogLevel Level, string Message)> Lines { get; } = new();
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Lines.Enqueue((logLevel, formatter(state, exception)));
    public bool Contains(string text) => Lines.Any(l => l.Message.Contains(text, StringComparison.Ordinal));
}

/// <summary>One vhost-user device (a <see cref="FakeVirtioDevice"/>) served on its own loop.</summary>
internal sealed class Backend : IAsyncDisposable
{
    private readonly TempDir _dir;
    private readonly bool _ownsLoop;
    private readonly bool _ownsDir;

    public Backend(VhostUserOptions? options = null, Func<IDeviceLoop, FakeVirtioDevice>? device = null, EventLoop? loop = null, TempDir? dir = null, string name = "dev0")
    {
        _ownsDir = dir is null;
        _dir = dir ?? new TempDir("vu");
        _ownsLoop = loop is null;
        Loop = loop ?? new EventLoop($"test-{name}");
        Options = options ?? new VhostUserOptions();
        if (string.IsNullOrEmpty(Options.SocketPath)) Options.SocketPath = _dir[name + ".sock"];
        Device = device?.Invoke(Loop) ?? new FakeVirtioDevice(Loop, name: name);
        Device.OnKick ??= Device.SignalUsed; // a device that answers each kick, unless the test set its own
        var host = new HostDescription { Gid = 1, StateDirectory = _dir.Path, SocketDirectory = _dir.Path };
        Transport = new VhostUserTransport(Options, Device.Description, host, Loop, Counters, Log);
        Loop.InvokeAsync(() => Transport.Start(Device)).GetAwaiter().GetResult();
    }

    public EventLoop Loop { get; }
    public VhostUserOptions Options { get; }
    public FakeVirtioDevice Device { get; }
    public VhostUserTransport Transport { get; }
    public TestCounters Counters { get; } = new();
    public ListLogger<VhostUserTransport> Log { get; } = new();
    public string SocketPath => Transport.Endpoint;

    /// <summary>Runs <paramref name="work"/> on the device loop.</summary>
    public T On<T>(Func<T> work) => Loop.InvokeAsync(work).GetAwaiter().GetResult();

    /// <summary>Runs an asynchronous call on the device loop and waits for it.</summary>
    public T OnAsync<T>(Func<Task<T>> work) => Loop.InvokeAsync(work).WaitAsync(TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();

    public ITransportServices Services => On(() => Device.Services) ?? throw new InvalidOperationException("no frontend connected");

    /// <summary>MapAsync on the loop, waited for.</summary>
    public string? Map(ShmId shmId, ulong offset, IMemoryBlock block, ulong length, bool writable = true)
    {
        ITransportServices services = Services;
        return OnAsync(() => services.MapAsync(shmId, offset, block, length, writable).AsTask());
    }

    /// <summary>UnmapAsync on the loop, waited for.</summary>
    public string? Unmap(ShmId shmId, ulong offset, ulong length)
    {
        ITransportServices services = Services;
        return OnAsync(() => services.UnmapAsync(shmId, offset, length).AsTask());
    }

    /// <summary>Connects vism's frontend with QEMU-like behaviour.</summary>
    public VhostUserFrontend Connect(GuestRam ram, VhostUserFrontendOptions? options = null) =>
        VhostUserFrontend.Connect(SocketPath, ram, options);

    /// <summary>Waits (generously) until <paramref name="condition"/> holds on the loop.</summary>
    public void WaitFor(Func<bool> condition, string what, int seconds = 20)
    {
        long deadline = Environment.TickCount64 + seconds * 1000L;
        while (!On(condition))
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"timed out waiting for {what}");
            Thread.Sleep(5);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Transport.DisposeAsync();
        if (_ownsLoop) Loop.Dispose();
        if (_ownsDir) _dir.Dispose();
    }
}

/// <summary>A backend with vism's frontend connected to it, optionally started by a driver.</summary>
internal sealed class Connected : IAsyncDisposable
{
    private Connected(Backend backend, GuestRam ram, VhostUserFrontend frontend)
    {
        B = backend;
        Ram = ram;
        F = frontend;
    }

    public Backend B { get; }
    public GuestRam Ram { get; }
    public VhostUserFrontend F { get; }

    /// <param name="options">Backend options.</param>
    /// <param name="frontend">Frontend options.</param>
    /// <param name="start">Probe the device like a driver and wait until it can map.</param>
    public static Connected Open(VhostUserOptions? options = null, VhostUserFrontendOptions? frontend = null, bool start = false)
    {
        var backend = new Backend(options);
        var ram = new GuestRam();
        var c = new Connected(backend, ram, backend.Connect(ram, frontend));
        if (start)
        {
            FrontendTests.Probe(c.F);
            backend.WaitFor(() => backend.Device.Services is { CanMap: true } && c.F.MappingCount(ShmId.Notify) == 1,
                "the device to start and share its NOTIFY window");
        }
        return c;
    }

    public async ValueTask DisposeAsync()
    {
        F.Dispose();
        Ram.Dispose();
        await B.DisposeAsync();
    }
}

/// <summary>A frontend made of raw messages, for protocol abuse.</summary>
internal sealed class RawClient : IDisposable
{
    private readonly MessageFramer _framer;

    public RawClient(string path)
    {
        Socket = UnixSocket.Connect(path);
        _framer = new MessageFramer(Socket, 8192);
    }

    public UnixSocket Socket { get; }

    public void Send(uint request, uint flags, ReadOnlySpan<byte> payload, params System.Runtime.InteropServices.SafeHandle[] fds) =>
        Socket.Send(Message.Build(request, flags, payload), fds);

    public void Send(FrontendRequest request, ReadOnlySpan<byte> payload, bool needReply = false, params System.Runtime.InteropServices.SafeHandle[] fds) =>
        Send((uint)request, VhostUserConstants.Version | (needReply ? VhostUserConstants.NeedReplyFlag : 0), payload, fds);

    /// <summary>Reads one reply, or null on timeout or end of stream.</summary>
    public (MessageHeader Header, byte[] Payload)? Read(int timeoutMs = 10_000)
    {
        if (!Socket.WaitReadable(timeoutMs)) return null;
        try
        {
            if (_framer.TryRead() != ReadStatus.Message) return null;
        }
        catch (PosixException)
        {
            return null;
        }
        return (_framer.Header, _framer.Payload.ToArray());
    }

    /// <summary>Sends a request that has a typed reply and returns its payload.</summary>
    public byte[] Call(FrontendRequest request, ReadOnlySpan<byte> payload = default)
    {
        Send(request, payload);
        var reply = Read() ?? throw new IOException($"no reply to {request}");
        Assert.Equal((uint)request, reply.Header.Request);
        Assert.Equal(VhostUserConstants.ReplyFlags, reply.Header.Flags);
        return reply.Payload;
    }

    /// <summary>Sends a request with NEED_REPLY and returns the ack value (0 = success).</summary>
    public ulong Ack(FrontendRequest request, ReadOnlySpan<byte> payload, params System.Runtime.InteropServices.SafeHandle[] fds)
    {
        Send(request, payload, needReply: true, fds);
        var reply = Read() ?? throw new IOException($"no ack to {request}");
        Assert.Equal((uint)request, reply.Header.Request);
        Assert.True(U64Payload.TryRead(reply.Payload, out ulong v), $"ack of {reply.Payload.Length} bytes");
        return v;
    }

    /// <summary>GET_FEATURES round trip: whether the backend still serves this connection.</summary>
    public bool IsServed()
    {
        try
        {
            Send(FrontendRequest.GetFeatures, []);
            var reply = Read(5000);
            return reply is { } r && r.Header.Request == (uint)FrontendRequest.GetFeatures && r.Payload.Length == 8;
        }
        catch (PosixException)
        {
            return false;
        }
    }

    /// <summary>Whether the backend closed this connection (end of stream within the timeout).</summary>
    public bool IsClosedByPeer(int timeoutMs = 10_000)
    {
        if (!Socket.WaitReadable(timeoutMs)) return false;
        Span<byte> b = stackalloc byte[64];
        try
        {
            return Socket.Receive(b, null) == 0;
        }
        catch (PosixException)
        {
            return true;
        }
    }

    /// <summary>Negotiates every protocol feature the backend offers (REPLY_ACK among them).</summary>
    public ulong NegotiateAll()
    {
        U64Payload.TryRead(Call(FrontendRequest.GetProtocolFeatures), out ulong offered);
        Send(FrontendRequest.SetProtocolFeatures, U64Payload.ToBytes(offered));
        return offered;
    }

    public void Dispose()
    {
        _framer.Dispose();
        Socket.Dispose();
    }
}

/// <summary>A memfd with a mapping, standing in for guest RAM or a region's backing.</summary>
internal sealed class TestBlock : IMemoryBlock
{
    private readonly Mapping _map;

    public TestBlock(ulong length, ulong fileLength = 0)
    {
        Handle = MemFd.Create("test-block", Math.Max(length, fileLength));
        Length = length;
        _map = Mapping.Map(Handle, 0, Math.Max(length, fileLength));
    }

    public SafeFileHandle Handle { get; }
    public ulong Offset => 0;
    public ulong Length { get; }
    public Span<byte> Span(int length) => _map.Span(0, length);
    public void Release() { }

    public void Dispose()
    {
        _map.Dispose();
        Handle.Dispose();
    }
}
