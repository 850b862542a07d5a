namespace Vism.Channel;

/// <summary>How a side waits when its ring is empty (reading) or full (writing).</summary>
public enum ChannelWaitMode
{
    /// <summary>Spin for <see cref="ChannelOptions.SpinTime"/>, then announce the wait in the
    /// region and block until the peer's notify arrives as an update event (eventq or vector). A
    /// blocking call waits on the device's events itself, spinning on them for the client's
    /// <c>IsmClientOptions.SpinBeforeBlock</c> before it sleeps.</summary>
    Event,

    /// <summary>Never block: spin on the peer's cursor. The peer never needs to notify this side;
    /// lowest latency, one core busy while waiting.</summary>
    Poll,
}

/// <summary>Choices of one <see cref="ChannelDevice"/>.</summary>
public sealed record ChannelOptions
{
    /// <summary>How reads and writes wait. Default <see cref="ChannelWaitMode.Event"/>.</summary>
    public ChannelWaitMode WaitMode { get; init; } = ChannelWaitMode.Event;

    /// <summary>In <see cref="ChannelWaitMode.Event"/> mode, how long to spin before blocking
    /// (0: block at once). Default 20 µs.</summary>
    public TimeSpan SpinTime { get; init; } = TimeSpan.FromMicroseconds(20);

    /// <summary>How far a bulk reader stays behind the writer (bytes; 0: off). Capped at half the
    /// ring; the default, <see cref="HalfRing"/>, is always half the ring (2047 KiB in an 8 MiB
    /// region). A read with a buffer of at least 64 KiB that follows a read of at least 64 KiB (a
    /// stream, not messages) and finds less than this ready while the writer's cursor is still
    /// moving spins until this much is ready, the cursor has stood still for
    /// <see cref="ReadGapQuiet"/>, or one quiet time and 1 ms have passed, and then reads. A reader
    /// that copies each 64 KiB slice as soon as it is published reads lines the writer's core has
    /// just written, and both sides then run at a third of the speed they reach megabytes apart
    /// (docs/benchmarks.md, "A bulk reader that keeps its distance"). Small reads and message
    /// reads never wait for it.</summary>
    public long ReadGap { get; init; } = HalfRing;

    /// <summary>The largest <see cref="ReadGap"/> (1 GiB), and its default: every ring is smaller,
    /// so the gap in effect is half the ring.</summary>
    public const long HalfRing = 1L << 30;

    /// <summary>How long the writer's cursor may stand still before a reader waiting for
    /// <see cref="ReadGap"/> takes what is there. Default 20 µs (a 64 KiB slice takes 2-7 µs to
    /// write here); 1 µs to 1 s.</summary>
    public TimeSpan ReadGapQuiet { get; init; } = TimeSpan.FromMicroseconds(20);

    /// <summary>How often this side bumps its heartbeat (and checks its peers'). Default 100 ms.</summary>
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>A peer whose heartbeat has not moved for this long (and for at least four of the
    /// peer's own intervals) is lost: waits on the channel throw <see cref="ChannelPeerLostException"/>.
    /// Default 3 s.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>Checks the values; throws <see cref="ArgumentOutOfRangeException"/> naming the bad one.</summary>
    internal void Validate()
    {
        if (SpinTime < TimeSpan.Zero || SpinTime > TimeSpan.FromSeconds(1))
            throw new ArgumentOutOfRangeException(nameof(SpinTime), SpinTime, "SpinTime must be between 0 and 1 s");
        if (ReadGap < 0 || ReadGap > HalfRing)
            throw new ArgumentOutOfRangeException(nameof(ReadGap), ReadGap, "ReadGap must be between 0 (off) and 1 GiB");
        if (ReadGapQuiet < TimeSpan.FromMicroseconds(1) || ReadGapQuiet > TimeSpan.FromSeconds(1))
            throw new ArgumentOutOfRangeException(nameof(ReadGapQuiet), ReadGapQuiet, "ReadGapQuiet must be between 1 µs and 1 s");
        if (HeartbeatInterval < TimeSpan.FromMilliseconds(1) || HeartbeatInterval > TimeSpan.FromSeconds(60))
            throw new ArgumentOutOfRangeException(nameof(HeartbeatInterval), HeartbeatInterval, "HeartbeatInterval must be between 1 ms and 60 s");
        if (PeerTimeout < 2 * HeartbeatInterval)
            throw new ArgumentOutOfRangeException(nameof(PeerTimeout), PeerTimeout, "PeerTimeout must be at least two heartbeat intervals");
    }
}
