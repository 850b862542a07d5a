using System.Buffers.Binary;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Native;

namespace Vism.Core.Tests;

/// <summary>A host with real loops, plus helpers to add devices served by in-memory transports.</summary>
internal sealed class Rig : IDisposable
{
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    public const ulong MiB = 1 << 20;

    private readonly List<Peer> _peers = [];
    private int _next;

    public Rig(SharingMode sharing = SharingMode.Pair, int loops = 2, ulong? gid = 0x00c0ffee_0000_0001)
    {
        Logs = new CapturingLogs();
        Loops = Enumerable.Range(0, loops).Select(i => new EventLoop($"test-loop-{i}", Logs.CreateLogger(LoopCategory))).ToArray();
        Host = new IsmHost(new IsmHostOptions { Gid = gid, Sharing = sharing }, Logs);
    }

    public CapturingLogs Logs { get; }

    private const string LoopCategory = "Vism.Loop";

    /// <summary>Runs <paramref name="work"/> on <paramref name="loop"/> and waits.</summary>
    public static void Run(IDeviceLoop loop, Action work) => loop.InvokeAsync(work).WaitAsync(Wait).GetAwaiter().GetResult();

    /// <summary>Waits until what is already posted to <paramref name="loop"/> has run.</summary>
    public static void Settle(IDeviceLoop loop)
    {
        Run(loop, () => { });
        Run(loop, () => { });
    }

    /// <summary><paramref name="owner"/> allocates a region of <paramref name="size"/> bytes and
    /// <paramref name="peer"/> attaches it; both must succeed.</summary>
    public static (AllocReply Region, ulong PeerOffset) Share(Peer owner, Peer peer, ulong size = 4096)
    {
        AllocReply region = owner.C.Alloc(size);
        Assert.True(region.Ok);
        AttachReply attach = peer.C.Attach(region.Token);
        Assert.True(attach.Ok);
        return (region, attach.Offset);
    }

    /// <summary>The token hint a <see cref="HostSnapshot"/> shows for <paramref name="token"/>.</summary>
    public static string Hint(ulong token) => $"{token >> 48:x4}…";

    public EventLoop[] Loops { get; }

    public IsmHost Host { get; }

    /// <summary>Adds a device with its own loop (round-robin), backend, counters and event channel.</summary>
    public Peer AddDevice(string? name = null, IEventChannel? events = null, ulong window = 16 * MiB, ulong regionSize = MiB,
        ulong notifySize = 1, ulong capacity = 64 * MiB, ulong pageSize = 4096)
    {
        name ??= $"dev{_peers.Count}";
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, window, regionSize, notifySize);
        var memory = new InMemoryBackend(capacity, pageSize);
        var counters = new DeviceCounters();
        EventLoop loop = Loops[_next++ % Loops.Length];
        IsmDevice device = Host.AddDevice(description, loop, memory, events, counters);
        var peer = new Peer(device, memory, counters, events as RecordingEventChannel);
        _peers.Add(peer);
        return peer;
    }

    /// <summary>Adds a device, connects an in-memory transport and starts an ISM client on it.</summary>
    public Peer AddClient(string? name = null, RecordingEventChannel? events = null, IsmClientOptions? options = null,
        int vectors = 4, ulong regionSize = MiB, ulong window = 16 * MiB, ulong capacity = 64 * MiB)
    {
        events ??= RecordingEventChannel.Irq();
        Peer peer = AddDevice(name, events, window, regionSize, capacity: capacity);
        peer.Connect(vectors, options);
        return peer;
    }

    /// <summary>Adds a device backed by <paramref name="backend"/> (a test double) on the first loop,
    /// with an IRQ recording channel, and starts a client on it.</summary>
    public Peer AddWithBackend(string name, IMemoryBackend backend, ulong window = 16 * MiB)
    {
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, window, MiB, 1);
        var counters = new DeviceCounters();
        IsmDevice device = Host.AddDevice(description, Loops[0], backend, RecordingEventChannel.Irq(), counters);
        var peer = new Peer(device, new InMemoryBackend(0), counters, null);
        _peers.Add(peer);
        peer.Connect();
        return peer;
    }

    /// <summary>Queues an ALLOC of <paramref name="size"/> bytes on <paramref name="p"/>'s controlq
    /// without kicking, so a test controls when the device sees it.</summary>
    /// <returns>The chain's head and where the 17-byte reply will be written.</returns>
    public static (ushort Head, ulong Reply) AddAllocRequest(Peer p, ulong size = 4096)
    {
        GuestRam ram = p.T.Ram;
        ulong request = ram.Allocate(10), reply = ram.Allocate(17);
        ram.Span(request, 2).Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(ram.Span(request + 2, 8), size);
        return (p.C.Driver.Queues[0].Add([new(request, 10)], [new(reply, 17)]), reply);
    }

    public void Dispose()
    {
        foreach (Peer p in _peers)
            p.Dispose();
        Host.Dispose();
        foreach (EventLoop l in Loops)
            l.Dispose();
        // Nothing may ever escape to a loop: the loop would log it and carry on, hiding the bug.
        var escaped = Logs.Entries.Where(e => e.Category == LoopCategory && e.Level >= LogLevel.Error).ToList();
        if (escaped.Count > 0)
            throw new Xunit.Sdk.XunitException($"{escaped.Count} exceptions escaped to a device loop, the first: {escaped[0].Message}");
    }
}

/// <summary>One device with what serves and drives it.</summary>
internal sealed class Peer(IsmDevice device, InMemoryBackend memory, DeviceCounters counters, RecordingEventChannel? events) : IDisposable
{
    public IsmDevice Device { get; } = device;
    public InMemoryBackend Memory { get; } = memory;
    public DeviceCounters Counters { get; } = counters;
    public RecordingEventChannel? Events { get; } = events;
    public InMemoryTransport? Transport { get; private set; }
    public IsmClient? Client { get; private set; }

    public IsmClient C => Client ?? throw new InvalidOperationException("no client");
    public InMemoryTransport T => Transport ?? throw new InvalidOperationException("no transport");
    public RecordingEventChannel E => Events ?? throw new InvalidOperationException("no recording channel");

    public InMemoryTransport Connect(int vectors = 4, IsmClientOptions? options = null, bool startClient = true)
    {
        Transport = InMemoryTransport.StartFor(Device, vectorCount: vectors);
        if (startClient)
            Client = IsmClient.Start(Transport, options);
        return Transport;
    }

    /// <summary>Starts a fresh client on the same transport (the probe resets the device).</summary>
    public void Reconnect(IsmClientOptions? options = null) => Client = IsmClient.Start(T, options);

    /// <summary>Runs on the device's loop and waits.</summary>
    public T OnLoop<T>(Func<T> work) => Device.Loop.InvokeAsync(work).WaitAsync(Rig.Wait).GetAwaiter().GetResult();

    /// <summary>Waits until everything already posted to the device's loop has run.</summary>
    public void Settle()
    {
        // Two turns: work posted by work that was posted runs on the next turn.
        OnLoop(() => true);
        OnLoop(() => true);
    }

    public void Dispose()
    {
        if (Client is not null)
            Client.Dispose();
        else
            Transport?.Dispose();
        Events?.Dispose();
    }
}

/// <summary>Captures log entries so tests can check that a reason was logged.</summary>
internal sealed class CapturingLogs : ILoggerFactory
{
    public ConcurrentQueue<(LogLevel Level, string Category, string Message)> Entries { get; } = new();

    public bool Contains(string fragment, LogLevel atLeast = LogLevel.Warning) =>
        Entries.Any(e => e.Level >= atLeast && e.Message.Contains(fragment, StringComparison.Ordinal));

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    private sealed class Logger(CapturingLogs owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Entries.Enqueue((logLevel, category, formatter(state, exception) + (exception is null ? "" : $" {exception}")));
    }
}
