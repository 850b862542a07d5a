using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Vism.Core.InMemory;
using Vism.Native;
using Vism.Testing;

namespace Vism.Events.Tests;

/// <summary>Which event plugin a device uses.</summary>
public enum EventsKind
{
    /// <summary>Events.Vq (VIRTIO_ISM_F_EVENT_VQ).</summary>
    Vq,

    /// <summary>Events.Irq (VIRTIO_ISM_F_EVENT_IRQ).</summary>
    Irq,
}

/// <summary>How one peer of a test is built.</summary>
internal sealed record PeerSpec
{
    public string? Name { get; init; }
    public int Vectors { get; init; } = 4;
    public IsmClientOptions? Client { get; init; }
    public ulong Window { get; init; } = 16 * EventRig.MiB;
    public ulong RegionSize { get; init; } = EventRig.MiB;
    public VqEventOptions Vq { get; init; } = new();
    public IrqEventOptions Irq { get; init; } = new();
}

/// <summary>
/// A host with real loops whose devices use the real event plugins, served by one transport kind
/// and driven by <see cref="IsmClient"/>.
/// </summary>
internal sealed class EventRig : IDisposable
{
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(200);
    public const ulong MiB = 1 << 20;

    private readonly List<Peer> _peers = [];
    private readonly TempDir _scratch = new("vism-ev");
    private readonly ITransportKind _transport;
    private int _next;

    public EventRig(string transport = "in-memory", SharingMode sharing = SharingMode.Pair, int loops = 2)
    {
        _transport = TransportKinds.Get(transport);
        Logs = new LogRecorder();
        Loops = Enumerable.Range(0, loops).Select(i => new EventLoop($"ev-loop-{i}")).ToArray();
        Host = new IsmHost(new IsmHostOptions { Gid = 0x0e0e_0001, Sharing = sharing }, Logs);
    }

    public LogRecorder Logs { get; }

    public EventLoop[] Loops { get; }

    /// <summary>Whether the transport delivers every NOTIFY write (see <see cref="ITransportKind.TrapsNotifyWrites"/>).</summary>
    public bool TrapsNotifyWrites => _transport.TrapsNotifyWrites;

    /// <summary>See <see cref="ITransportKind.SeesUnassignedSlots"/>.</summary>
    public bool SeesUnassignedSlots => _transport.SeesUnassignedSlots;

    public IsmHost Host { get; }

    /// <summary>Adds a device using <paramref name="events"/>, serves it and starts a client on it.</summary>
    public Peer Add(EventsKind events, PeerSpec? spec = null)
    {
        spec ??= new PeerSpec();
        string name = spec.Name ?? $"dev{_peers.Count}";
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, spec.Window, spec.RegionSize, 1);
        EventLoop loop = Loops[_next++ % Loops.Length];
        IEventChannel channel = events switch
        {
            EventsKind.Vq => new VqEventChannel(spec.Vq, description, loop, Logs.CreateLogger<VqEventChannel>()),
            _ => new IrqEventChannel(spec.Irq, description, loop, Logs.CreateLogger<IrqEventChannel>()),
        };
        var counters = new DeviceCounters();
        IsmDevice device = Host.AddDevice(description, loop, new InMemoryBackend(256 * MiB), channel, counters);
        var peer = new Peer(device, channel, counters);
        _peers.Add(peer);
        peer.Serve(_transport.Serve(device, spec.Vectors, _scratch.Path, Logs), spec.Client);
        return peer;
    }

    /// <summary>A writer (Events.Vq) and a reader using <paramref name="reader"/>, sharing one region
    /// the writer allocated.</summary>
    public SharedRegion Pair(EventsKind reader, PeerSpec? readerSpec = null, PeerSpec? writer = null)
    {
        Peer a = Add(EventsKind.Vq, writer);
        Peer b = Add(reader, readerSpec);
        AllocReply region = a.Alloc();
        return new SharedRegion(a, b, region.Offset, b.Attach(region.Token));
    }

    /// <summary>Allocates <paramref name="count"/> regions on <paramref name="a"/> and attaches them on <paramref name="b"/>.</summary>
    public static (ulong[] AtA, ulong[] AtB) Share(Peer a, Peer b, int count)
    {
        var atA = new ulong[count];
        var atB = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            AllocReply r = a.Alloc();
            atA[i] = r.Offset;
            atB[i] = b.Attach(r.Token);
        }
        return (atA, atB);
    }

    public void Dispose()
    {
        foreach (Peer p in _peers)
            p.Dispose();
        Host.Dispose();
        foreach (EventLoop l in Loops)
            l.Dispose();
        _scratch.Dispose();
    }
}

/// <summary>Two peers sharing a region.</summary>
/// <param name="A">The writer (it allocated the region).</param>
/// <param name="B">The reader (it attached it).</param>
/// <param name="AtA">The region's offset on <paramref name="A"/>.</param>
/// <param name="AtB">The region's offset on <paramref name="B"/>.</param>
internal sealed record SharedRegion(Peer A, Peer B, ulong AtA, ulong AtB);

/// <summary>One device with its event channel, counters and driver.</summary>
internal sealed class Peer(IsmDevice device, IEventChannel events, DeviceCounters counters) : IDisposable
{
    private Served? _served;
    private IsmClient? _client;

    public IsmDevice Device { get; } = device;
    public IEventChannel Events { get; } = events;
    public DeviceCounters Counters { get; } = counters;

    public VqEventChannel Vq => Events as VqEventChannel ?? throw new InvalidOperationException("not a vq peer");
    public IrqEventChannel Irq => Events as IrqEventChannel ?? throw new InvalidOperationException("not an irq peer");

    public IsmClient C => _client ?? throw new InvalidOperationException("no client");
    public IDriverTransport T => _served?.Driver ?? throw new InvalidOperationException("not served");

    public void Serve(Served served, IsmClientOptions? options)
    {
        _served = served;
        _client = IsmClient.Start(served.Driver, options);
    }

    /// <summary>Returns once every NOTIFY write this peer's driver made has been routed by its device.</summary>
    public void AwaitNotifies() => (_served ?? throw new InvalidOperationException("not served")).AwaitNotifies();

    /// <summary>Runs on the device's loop and waits.</summary>
    public T OnLoop<T>(Func<T> work) => Device.Loop.InvokeAsync(work).WaitAsync(EventRig.Wait).GetAwaiter().GetResult();

    /// <summary>Waits until what was posted to the device's loop has run, and what that posted too
    /// (a delivery posts its flush to the next turn).</summary>
    public void Settle()
    {
        OnLoop(() => true);
        OnLoop(() => true);
        OnLoop(() => true);
    }

    /// <summary>Waits until counter <paramref name="name"/> reaches <paramref name="value"/>.</summary>
    public bool WaitCounter(string name, long value, TimeSpan? timeout = null)
    {
        long deadline = Environment.TickCount64 + (long)(timeout ?? EventRig.Wait).TotalMilliseconds;
        while (Counters.Get(name) < value)
        {
            if (Environment.TickCount64 > deadline)
                return false;
            Thread.Sleep(1);
        }
        return true;
    }

    /// <summary>Allocates a region and asserts it worked.</summary>
    public AllocReply Alloc(ulong size = 4096)
    {
        AllocReply r = C.Alloc(size);
        Assert.True(r.Ok, $"ALLOC failed on {Device.Description.Name}");
        return r;
    }

    /// <summary>Attaches a region and asserts it worked; returns its offset here.</summary>
    public ulong Attach(ulong token)
    {
        AttachReply r = C.Attach(token);
        Assert.True(r.Ok, $"ATTACH failed on {Device.Description.Name}");
        return r.Offset;
    }

    /// <summary>Collects eventq offsets until none arrives for <see cref="EventRig.Quiet"/>.</summary>
    public List<ulong> CollectEvents(int atLeast = 0)
    {
        var offsets = new List<ulong>();
        long deadline = Environment.TickCount64 + (long)EventRig.Wait.TotalMilliseconds;
        while (true)
        {
            TimeSpan wait = offsets.Count < atLeast ? TimeSpan.FromMilliseconds(Math.Max(1, deadline - Environment.TickCount64)) : EventRig.Quiet;
            IReadOnlyList<ulong>? e = C.WaitEvent(wait);
            if (e is null)
                return offsets;
            offsets.AddRange(e);
        }
    }

    /// <summary>Counts firings of <paramref name="vector"/> until it stays quiet for <see cref="EventRig.Quiet"/>.</summary>
    public int CollectFirings(int vector)
    {
        int firings = 0;
        while (C.WaitVector(vector, EventRig.Quiet))
            firings++;
        return firings;
    }

    public void Dispose()
    {
        _client?.Dispose();
        if (_served?.Stop is { } stop)
            stop().WaitAsync(EventRig.Wait).GetAwaiter().GetResult();
        OnLoop(() => { Events.Dispose(); return true; });
    }
}

/// <summary>Keeps every log entry so tests can check that a reason was logged.</summary>
internal sealed class LogRecorder : ILoggerFactory
{
    public ConcurrentQueue<(LogLevel Level, string Message)> Entries { get; } = new();

    public bool Logged(string fragment, LogLevel atLeast = LogLevel.Warning) =>
        Entries.Any(e => e.Level >= atLeast && e.Message.Contains(fragment, StringComparison.Ordinal));

    public ILogger CreateLogger(string categoryName) => new Recorder(this);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    private sealed class Recorder(LogRecorder owner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
                owner.Entries.Enqueue((logLevel, formatter(state, exception)));
        }
    }
}
