using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Driver;

namespace Vism.Conformance;

/// <summary>Timeouts and windows the checks use. The defaults are generous: the suite must pass on a
/// loaded 2-core machine; it measures no speed.</summary>
public sealed record ConformanceOptions
{
    /// <summary>How long a check may take in all before it fails.</summary>
    public TimeSpan CheckTimeout { get; init; } = TimeSpan.FromSeconds(90);

    /// <summary>How long an expected update event may take to arrive.</summary>
    public TimeSpan EventTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a device is watched for an event that must not come (the writer, a detached
    /// peer). An absence check can only pass wrongly on a slow machine, never fail wrongly.</summary>
    public TimeSpan QuietWindow { get; init; } = TimeSpan.FromMilliseconds(300);

    /// <summary>How long a control request may take.</summary>
    public TimeSpan ControlTimeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>Thrown by <see cref="CheckContext"/> helpers to end a check with a non-passing outcome.</summary>
public sealed class CheckEndedException : Exception
{
    internal CheckEndedException(Outcome outcome, string reason, string? fix = null) : base(reason)
    {
        Outcome = outcome;
        Fix = fix;
    }

    /// <summary>The outcome.</summary>
    public Outcome Outcome { get; }

    /// <summary>For a skip: how to make the check run.</summary>
    public string? Fix { get; }
}

/// <summary>
/// What a running check has: the combination under test, a way to compose devices of it and connect
/// drivers, and expectation helpers. Everything it composes is disposed when the check ends.
/// </summary>
public sealed class CheckContext : IAsyncDisposable
{
    private readonly IComposer _composer;
    private readonly List<Rig> _rigs = [];
    private readonly List<string> _directories = [];
    private readonly CancellationToken _cancellation;
    private bool _disposed;

    internal CheckContext(IComposer composer, Combination combination, ConformanceOptions options, ILogger log, CancellationToken cancellation)
    {
        _composer = composer;
        Combination = combination;
        Options = options;
        Log = log;
        _cancellation = cancellation;
    }

    /// <summary>The combination under test.</summary>
    public Combination Combination { get; }

    /// <summary>Timeouts.</summary>
    public ConformanceOptions Options { get; }

    /// <summary>The check's logger.</summary>
    public ILogger Log { get; }

    /// <summary>Composes a host of the combination's plugins and connects a driver to each device.</summary>
    /// <param name="spec">The host; null for two devices with the defaults.</param>
    /// <param name="driver">How the drivers negotiate; null accepts every feature offered.</param>
    /// <returns>The devices with their drivers, disposed when the check ends.</returns>
    public Rig Compose(HostSpec? spec = null, IsmClientOptions? driver = null)
    {
        spec ??= new HostSpec();
        IComposition composition;
        try
        {
            composition = _composer.ComposeAsync(Combination, spec, _cancellation).GetAwaiter().GetResult();
        }
        catch (CompositionUnavailableException ex)
        {
            throw new CheckEndedException(ex.NotApplicable ? Outcome.NotApplicable : Outcome.Skipped, ex.Message, ex.Fix);
        }
        var rig = new Rig(this, composition);
        bool late;
        lock (_rigs)
        {
            late = _disposed;
            if (!late)
                _rigs.Add(rig);
        }
        if (late)
        {
            // The check outlived its timeout and was cleaned up already: stop what it just made.
            rig.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw new CheckEndedException(Outcome.Failed, "the check was stopped while it composed devices");
        }
        foreach (ComposedDevice device in composition.Devices)
            rig.AddPeer(device, driver ?? DefaultDriver);
        return rig;
    }

    /// <summary>A new empty directory (for a host's state directory that outlives one composition, so
    /// that a check can start "the same host" again); removed when the check ends.</summary>
    /// <returns>Its absolute path.</returns>
    public string TempDirectory()
    {
        string path = Directory.CreateTempSubdirectory("vism-check-").FullName;
        lock (_rigs)
            _directories.Add(path);
        return path;
    }

    /// <summary>The driver choices used when a check names none: every feature accepted.</summary>
    public IsmClientOptions DefaultDriver => new() { Timeout = Options.ControlTimeout };

    /// <summary>A driver that accepts neither VIRTIO_ISM_F_EVENT_VQ nor VIRTIO_ISM_F_EVENT_IRQ.</summary>
    public IsmClientOptions NoEventDriver => DefaultDriver with { EventVq = false, EventIrq = false };

    /// <summary>Fails the check unless <paramref name="condition"/> holds.</summary>
    /// <param name="condition">The expectation.</param>
    /// <param name="reason">What was expected and what was seen.</param>
    public void Expect([DoesNotReturnIf(false)] bool condition, string reason)
    {
        if (!condition)
            Fail(reason);
    }

    /// <summary>Ends the check as failed.</summary>
    /// <param name="reason">What was expected and what was seen.</param>
    [DoesNotReturn]
    public void Fail(string reason) => throw new CheckEndedException(Outcome.Failed, reason);

    /// <summary>Ends the check as skipped.</summary>
    /// <param name="reason">Why it cannot run here.</param>
    /// <param name="fix">How to make it run.</param>
    [DoesNotReturn]
    public void Skip(string reason, string fix) => throw new CheckEndedException(Outcome.Skipped, reason, fix);

    /// <summary>Ends the check as not applicable to this combination.</summary>
    /// <param name="reason">Why it does not apply.</param>
    [DoesNotReturn]
    public void NotApplicable(string reason) => throw new CheckEndedException(Outcome.NotApplicable, reason);

    /// <summary>Ends the check as not applicable unless the device offers feature <paramref name="bit"/>.</summary>
    /// <param name="peer">A connected peer.</param>
    /// <param name="bit">A feature bit number.</param>
    /// <param name="name">The feature's name for the reason.</param>
    public void RequireOffered(Peer peer, int bit, string name)
    {
        if (!Features.Has(peer.Client.Driver.DeviceFeatures, bit))
            NotApplicable($"the device does not offer {name} (events kind '{Combination.Events}')");
    }

    /// <summary>Ends the check as not applicable unless the device offers an event feature.</summary>
    /// <param name="peer">A connected peer.</param>
    public void RequireAnyEventFeature(Peer peer)
    {
        if ((peer.Client.Driver.DeviceFeatures & Features.Mask(Features.IsmEventVq, Features.IsmEventIrq)) == 0)
            NotApplicable($"the device offers no event feature (events kind '{Combination.Events}')");
    }

    /// <summary>Disposes every driver and composition the check made.</summary>
    public async ValueTask DisposeAsync()
    {
        Rig[] rigs;
        lock (_rigs)
        {
            _disposed = true;
            rigs = [.. _rigs];
            _rigs.Clear();
        }
        for (int i = rigs.Length - 1; i >= 0; i--)
            await rigs[i].DisposeAsync().ConfigureAwait(false);
        string[] directories;
        lock (_rigs)
        {
            directories = [.. _directories];
            _directories.Clear();
        }
        foreach (string d in directories)
        {
            try
            {
                Directory.Delete(d, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                Log.LogWarning("cannot remove {Directory}: {Error}", d, ex.Message);
            }
        }
    }
}
