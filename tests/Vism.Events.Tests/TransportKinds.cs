namespace Vism.Events.Tests;

/// <summary>A device served by a transport, seen from both ends.</summary>
/// <param name="Driver">The driver side (what a VMM or guest driver uses).</param>
/// <param name="Stop">Stops the device side after the driver side is disposed; null when disposing
/// <paramref name="Driver"/> already did (the in-memory transport is both ends).</param>
internal sealed record Served(IDriverTransport Driver, Func<Task>? Stop = null);

/// <summary>How the transport-agnostic tests serve a device and reach it as a driver.</summary>
internal interface ITransportKind
{
    /// <summary>The name a theory row shows.</summary>
    string Name { get; }

    /// <summary>Serves <paramref name="device"/> with a transport offering <paramref name="vectors"/>
    /// per-region vectors and connects a driver side to it.</summary>
    /// <param name="device">A device not yet served.</param>
    /// <param name="vectors">Per-region interrupt vectors the transport offers.</param>
    /// <param name="scratch">A directory for sockets and files of this test.</param>
    /// <returns>Both ends.</returns>
    Served Serve(IsmDevice device, int vectors, string scratch);
}

/// <summary>The device side and driver side in one process, without sockets.</summary>
internal sealed class InMemoryKind : ITransportKind
{
    public string Name => "in-memory";

    public Served Serve(IsmDevice device, int vectors, string scratch) =>
        new(InMemoryTransport.StartFor(device, ramSize: 8 << 20, vectorCount: vectors));
}

/// <summary>Every transport the end-to-end theories run over. A transport that lands on main is
/// added here with one line.</summary>
internal static class TransportKinds
{
    private static readonly ITransportKind[] All =
    [
        new InMemoryKind(),
    ];

    public static ITransportKind Get(string name) =>
        All.FirstOrDefault(k => k.Name == name) ?? throw new ArgumentException($"no transport kind '{name}'", nameof(name));

    /// <summary>Theory rows: one per transport.</summary>
    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (ITransportKind k in All)
            data.Add(k.Name);
        return data;
    }

    /// <summary>Theory rows: every transport with every event plugin.</summary>
    public static TheoryData<string, EventsKind> NamesAndEvents()
    {
        var data = new TheoryData<string, EventsKind>();
        foreach (ITransportKind k in All)
            foreach (EventsKind e in Enum.GetValues<EventsKind>())
                data.Add(k.Name, e);
        return data;
    }
}
