using SharpFuzz;

namespace Vism.Fuzz;

/// <summary>
/// <c>Vism.Fuzz TARGET</c> runs one fuzz target under AFL++ (persistent mode, the input on AFL's
/// shared memory; scripts/fuzz.sh starts it). <c>Vism.Fuzz TARGET PATH...</c> replays files, or
/// every file in folders (a seed corpus, a crash AFL found) once each and says which input broke
/// which rule. A target throws <see cref="FuzzFinding"/> (or lets an unexpected exception escape)
/// when the code under test broke its contract: that is a crash to AFL.
/// </summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        if (args is ["--write-seeds", string seedRoot])
        {
            Seeds.Write(seedRoot);
            return 0;
        }
        if (args.Length == 0 || !Targets.All.TryGetValue(args[0], out Func<IFuzzTarget>? create))
        {
            Console.Error.WriteLine($"usage: Vism.Fuzz TARGET [FILE|DIR...]\ntargets: {string.Join(", ", Targets.All.Keys)}");
            return 2;
        }
        if (args.Length == 1)
        {
            // AFL++ persistent mode: SharpFuzz reads each input from AFL's shared memory. Instrumented
            // code must not run before Fuzzer.Run set up the coverage map: the target is made by the
            // first input.
            IFuzzTarget? fuzzed = null;
            Fuzzer.Run(stream => (fuzzed ??= create()).Run(ReadAll(stream)));
            fuzzed?.Dispose();
            return 0;
        }
        using IFuzzTarget target = create();
        int failed = 0, ran = 0;
        foreach (string file in args.Skip(1).SelectMany(Expand))
        {
            ran++;
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception ex)
            {
                failed++;
                // A broken rule says what broke; anything else is a bug whose stack matters.
                Console.Error.WriteLine(ex is FuzzFinding ? $"{file}: {ex.GetType().Name}: {ex.Message}" : $"{file}: {ex}");
            }
        }
        Console.WriteLine($"{args[0]}: replayed {ran} inputs, {failed} failed");
        return failed == 0 ? 0 : 1;
    }

    private static IEnumerable<string> Expand(string path) =>
        Directory.Exists(path) ? Directory.EnumerateFiles(path).Order(StringComparer.Ordinal) : [path];

    private static byte[] ReadAll(Stream stream)
    {
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}

/// <summary>One fuzz target: created once per process, then run on many inputs.</summary>
internal interface IFuzzTarget : IDisposable
{
    /// <summary>Feeds one input to the code under test.</summary>
    /// <exception cref="FuzzFinding">The code broke its contract on this input.</exception>
    void Run(ReadOnlySpan<byte> input);
}

/// <summary>The code under test broke its contract (a wrong exception, a broken invariant).</summary>
internal sealed class FuzzFinding(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The targets by name.</summary>
internal static class Targets
{
    public static readonly IReadOnlyDictionary<string, Func<IFuzzTarget>> All = new Dictionary<string, Func<IFuzzTarget>>(StringComparer.Ordinal)
    {
        ["vhost-user"] = () => new VhostUserTarget(),
        ["vhost-user-session"] = () => new VhostUserSessionTarget(),
        ["mmio"] = () => new MmioTarget(),
        ["control"] = () => new ControlTarget(),
        ["splitqueue"] = () => new SplitQueueTarget(),
        ["config"] = () => new ConfigTarget(),
    };
}
