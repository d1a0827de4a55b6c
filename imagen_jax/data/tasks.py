"""The ShapesWorld task catalogue: every task as a multi-modal instruction.

Each task turns a random generator into a `TaskExample`: a
`MultiModalInstruction` (payload text with `[ref#k]` markers, context items,
optional channel-concat input image), the target image, and `meta` holding
the scene(s) and the conditions the target satisfies, which
`evaluation.task_metrics` scores.

Tasks (DESIGN §1b):
- text_to_image: a caption.
- edge/mask/depth/sketch_to_image: a control map as context item `[ref#1]`
  (also the channel-concat input, since it is pixel-aligned) plus a caption
  of what the objects look like; where they are, only the map says.
- subject: a named subject shown in 1-3 reference images (context text
  "a zorblat"), placed in a new scene.
- style_generation: a style image (same background style, other content);
  new content in that style.
- style_transfer: content image `[ref#1]` (also the input image) and style
  image `[ref#2]`; the content re-rendered in the style.
- role_transfer (opt-in, `Task.opt_in`): style transfer whose two
  references are both just "an image"; the instruction alone says which one
  gives the objects and which the background, drawn at random per example.
  No input image. The raw baseline's text names the markers in order, so no
  condition but the instruction tells the roles apart.
- role_transfer_told (opt-in): role_transfer with the items' texts saying
  their roles (style transfer's "content image", "style image", ...): an
  oracle of the roles, which tells whether a model that is given them can
  use them.
- reference_objects, reference_style (opt-in): one reference image (its
  objects on its background, item text "an image"; also the input image)
  and a caption of another scene that names its objects and its background;
  the instruction alone says which part the reference gives: its objects,
  in the caption's setting (reference_objects), or its style, the caption's
  objects on it (reference_style). The two tasks' raw texts ("{caption} [ref#1]") and
  items are alike in kind, so without the instruction words either target is
  as likely; their templates tell them apart by words, not by word order.
- edit: recolour / move / remove one object of the input image.
- segmentation, detection, depth_estimation, classification (InstructCV):
  the input image goes through `input_image`; targets from `controls`.
- Zero-shot combinations, held out of training (`zero_shot=True`):
  subject+style, control+subject, control+style, multi_subject; and, opt-in,
  subject+reference_style: subject+style whose style image is reference_style's
  reference (an image of objects on a background, also the input image), so
  that only the words say it gives its style and not its objects.

Every task has >= 20 training templates and a disjoint set of >= 5 unseen
paraphrases (`unseen=True`) for robustness evaluation. A template's `{fields}`
tell which variant it phrases (e.g. edit templates with `{colour}` recolour).

Scenes avoid the held-out (shape, colour, position) triples. ShapesWorld
objects never overlap, so z-order is invisible in a rendering; task scenes
therefore order z by a visible ground-plane cue (lower rows nearer, then large
before small, then left before right), which makes depth learnable from pixels.

Mixture (`MIXTURE`, normalised): Instruct-Imagen's stage-2 ratios, with its
art data (text-to-image of art styles) folded into style_generation since the
background is our only style, and its face subsets into subject; editing and
the InstructCV tasks are added at smaller weights:
  text 0.15, style generation 0.10 + art 0.05, style transfer 0.10,
  depth 0.06, mask 0.06, edge 0.06, sketch 0.02, subject 0.35,
  edit 0.10, segmentation/detection/depth estimation/classification 0.04 each.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import string
import types
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from imagen_jax.data import controls, shapes_world
from imagen_jax.data.shapes_world import Background, Obj, Scene
from imagen_jax.instructions import ContextItem, MultiModalInstruction

Identity = tuple[str, str, str]  # a subject's (shape, colour, pattern)
_MARKER = re.compile(r"\[ref#[0-9]+\]")
# Most context items any task builds (multi_subject: 2 subjects x 2 images).
MAX_CONTEXT = 4
_HELD_OUT = shapes_world.held_out_triples()


@dataclasses.dataclass(frozen=True)
class World:
    """The scenes the tasks draw: one code path, two sizes (DESIGN §4).

    Attributes:
      name: "full" (what an accelerator run learns) or "simple" (the CPU
        world: 2 CPU cores learn it within a couple of hours).
      resolution: image side in pixels; a positive multiple of 16.
      max_objects: most objects in a scene, a subject's companions included;
        scenes that must hold more (two subjects) hold exactly those.
      depth_objects: (fewest, most) objects of a depth-estimation scene:
        ordering is only scored between two objects or more.
      named_subjects: subjects are shapes_world's named identities (a fixed,
        long-tailed set) or, if False, any (shape, colour, fill) under a
        made-up name drawn per example, so that the identity can only come
        from the reference images.
      grammar: the captions' `shapes_world.GRAMMARS` entry; examples phrased
        with unseen templates also use the "unseen" grammar.
      query_objects: (fewest, most) objects of a scene of the tasks that ask
        about a named object (segmentation, detection, classification); None
        is (1, max_objects). With two, the named object has to be found by
        matching the text against the image (`make_example(query_objects=)`).
      answers: the names (`controls.ANSWER_COLOURS`) of classification's two
        answers, present then absent. The templates say "red" and "blue";
        other names replace those words (`make_example(answers=)`).
    """

    name: str
    resolution: int = 32
    max_objects: int = 3
    depth_objects: tuple[int, int] = (1, 3)
    named_subjects: bool = True
    grammar: str = "varied"
    query_objects: tuple[int, int] | None = None
    answers: tuple[str, str] = controls.ANSWERS


WORLDS: Mapping[str, World] = types.MappingProxyType(
    {
        "full": World("full"),
        "simple": World(
            "simple", max_objects=1, depth_objects=(2, 2), named_subjects=False
        ),
    }
)


def get_world(name: str, resolution: int = 32) -> World:
    """The world called `name` at `resolution`."""
    if name not in WORLDS:
        raise ValueError(f"unknown task world {name!r}; known: {sorted(WORLDS)}")
    if resolution <= 0 or resolution % 16:
        raise ValueError(
            f"resolution must be a positive multiple of 16, got {resolution}"
        )
    return dataclasses.replace(WORLDS[name], resolution=resolution)


# --------------------------------------------------------------------------
# Templates. Fields: {caption} full caption, {content} caption without the
# background, {control} control noun, {scene} where a subject goes (+ others,
# + background), {extra} optional background clause, {object} a unique noun
# phrase, {a_object} the same with an article, {colour}, {position}.

_TEXT = (
    "{caption}",
    "Generate an image of {caption}.",
    "Create a picture of {caption}.",
    "Draw {caption}.",
    "Render {caption}.",
    "An image of {caption}.",
    "Make an image showing {caption}.",
    "Please generate {caption}.",
    "Paint {caption}.",
    "Show me {caption}.",
    "I would like an image of {caption}.",
    "Produce a picture with {caption}.",
    "Generate a scene containing {caption}.",
    "Picture {caption}.",
    "Can you draw {caption}?",
    "Illustrate {caption}.",
    "Create {caption}.",
    "A picture showing {caption}.",
    "Synthesize an image of {caption}.",
    "Depict {caption}.",
    "Generate a picture: {caption}.",
    "Make a drawing of {caption}.",
)
_TEXT_UNSEEN = (
    "Visualize the following: {caption}.",
    "Your task: produce artwork featuring {caption}.",
    "Imagine {caption}, and draw it.",
    "Compose an image in which we see {caption}.",
    "Bring this description to life: {caption}.",
    "Here is what the picture should hold: {caption}.",
)

_CONTROL = (
    "Generate an image of {caption}, following the {control} [ref#1].",
    "Use the {control} [ref#1] to generate an image of {caption}.",
    "Create a picture of {caption} that matches the {control} [ref#1].",
    "Following the {control} [ref#1], draw {caption}.",
    "Render {caption} with the layout given by the {control} [ref#1].",
    "Generate an image conditioned on the {control} [ref#1]: {caption}.",
    "Draw {caption}; the {control} [ref#1] gives the layout.",
    "Given the {control} [ref#1], generate {caption}.",
    "Make an image of {caption} consistent with the {control} [ref#1].",
    "Produce {caption} so that it matches [ref#1], the {control}.",
    "Turn the {control} [ref#1] into an image of {caption}.",
    "Paint {caption} according to the {control} [ref#1].",
    "Create an image from the {control} [ref#1] showing {caption}.",
    "Generate a picture that follows the {control} [ref#1] and shows {caption}.",
    "The {control} [ref#1] shows where things go. Draw {caption}.",
    "Based on the {control} [ref#1], render {caption}.",
    "Synthesize an image of {caption} guided by the {control} [ref#1].",
    "Generate {caption}, aligned with the {control} [ref#1].",
    "Using [ref#1] as the {control}, create {caption}.",
    "Fill in the {control} [ref#1] to show {caption}.",
    "Match the {control} [ref#1] and depict {caption}.",
    "Generate an image of {caption} whose {control} is [ref#1].",
)
_CONTROL_UNSEEN = (
    "Respecting the shapes in the {control} [ref#1], produce a picture of {caption}.",
    "Here is the {control} [ref#1]; please paint {caption} on its structure.",
    "Take the {control} [ref#1] as a blueprint for {caption}.",
    "Keep the geometry of the {control} [ref#1] and fill the scene with {caption}.",
    "Starting from the {control} [ref#1], imagine and draw {caption}.",
    "Conform to [ref#1] (the {control}) while showing {caption}.",
)

_SUBJECT = (
    "Generate an image of [ref#1] {scene}.",
    "Create a picture of [ref#1] {scene}.",
    "Draw [ref#1] {scene}.",
    "Render [ref#1] {scene}.",
    "Show [ref#1] {scene}.",
    "Make an image with [ref#1] {scene}.",
    "Place [ref#1] {scene}.",
    "Generate a new image of [ref#1] {scene}.",
    "Paint [ref#1] {scene}.",
    "Depict the subject [ref#1] {scene}.",
    "Put [ref#1] {scene} and draw it.",
    "An image of [ref#1] {scene}.",
    "I want to see [ref#1] {scene}.",
    "Produce a picture where [ref#1] appears {scene}.",
    "Generate [ref#1] {scene}.",
    "Create a new scene with [ref#1] {scene}.",
    "Draw the same subject as [ref#1] {scene}.",
    "Render the subject from [ref#1] {scene}.",
    "Illustrate [ref#1] {scene}.",
    "Can you generate [ref#1] {scene}?",
    "Synthesize an image showing [ref#1] {scene}.",
    "Make a picture of [ref#1] {scene}.",
)
_SUBJECT_UNSEEN = (
    "Take the character from [ref#1] and move it into a fresh picture, {scene}.",
    "Keeping its look, redraw [ref#1] {scene}.",
    "Recreate [ref#1] in a new setting: {scene}.",
    "Imagine [ref#1] {scene} and show it.",
    "Same subject as in [ref#1], but now {scene}.",
)

_STYLE_GENERATION = (
    "Generate {content} in the style of [ref#1].",
    "Create a picture of {content} in the style of [ref#1].",
    "Draw {content}, styled like [ref#1].",
    "Render {content} using the style of [ref#1].",
    "Make an image of {content} with the same style as [ref#1].",
    "In the style of [ref#1], generate {content}.",
    "Paint {content} in the style shown in [ref#1].",
    "Generate an image of {content}; copy the style of [ref#1].",
    "Following the style of [ref#1], draw {content}.",
    "Produce {content} with the background style of [ref#1].",
    "Use the style of [ref#1] to create {content}.",
    "Create {content} matching the style of [ref#1].",
    "Show {content} in [ref#1] style.",
    "An image of {content} in the style of [ref#1].",
    "Generate {content}, with style taken from [ref#1].",
    "Apply the style of [ref#1] to a new image of {content}.",
    "Draw {content} the way [ref#1] is styled.",
    "Render an image of {content} styled after [ref#1].",
    "Make {content} in the same style as [ref#1].",
    "Synthesize {content} in the style of [ref#1].",
    "Generate a stylized image of {content} like [ref#1].",
)
_STYLE_GENERATION_UNSEEN = (
    "Borrow the look of [ref#1] (ignore its objects) and paint {content}.",
    "Give a picture of {content} the aesthetic of [ref#1].",
    "Make {content}, dressed in the visual style that [ref#1] has.",
    "With [ref#1] as the style guide, compose {content}.",
    "Style: [ref#1]. Content: {content}.",
    "Mimic the background look of [ref#1] for a new image of {content}.",
)

_STYLE_TRANSFER = (
    "Render [ref#1] in the style of [ref#2].",
    "Transfer the style of [ref#2] to [ref#1].",
    "Redraw [ref#1] with the style of [ref#2].",
    "Apply the style of [ref#2] to [ref#1].",
    "Make [ref#1] look like the style of [ref#2].",
    "Restyle [ref#1] after [ref#2].",
    "Keep the content of [ref#1] but use the style of [ref#2].",
    "Generate [ref#1] in the style of [ref#2].",
    "Change the style of [ref#1] to match [ref#2].",
    "Paint the content of [ref#1] in the style of [ref#2].",
    "Create an image with the content of [ref#1] and the style of [ref#2].",
    "Use [ref#2] as the style for [ref#1].",
    "Convert [ref#1] into the style of [ref#2].",
    "Recreate [ref#1] in [ref#2] style.",
    "Style transfer: content [ref#1], style [ref#2].",
    "Draw the objects of [ref#1] with the style of [ref#2].",
    "Re-render [ref#1] using the background style of [ref#2].",
    "Give [ref#1] the style of [ref#2].",
    "Transform [ref#1] so its style matches [ref#2].",
    "Show [ref#1] restyled like [ref#2].",
    "Put the style of [ref#2] on [ref#1].",
)
_STYLE_TRANSFER_UNSEEN = (
    "Leave every object of [ref#1] where it is, but dress the picture in the "
    "look of [ref#2].",
    "What would [ref#1] look like if it were made in the manner of [ref#2]? Draw it.",
    "Blend: layout and objects from [ref#1], look and feel from [ref#2].",
    "Swap the backdrop style of [ref#1] for the one in [ref#2].",
    "Reimagine [ref#1] with [ref#2] as the stylistic reference.",
)

# Style transfer's phrasings with the roles as fields, filled with the
# markers in either order (`_role_transfer`).
_ROLE_TRANSFER, _ROLE_TRANSFER_UNSEEN = (
    tuple(
        t.replace("[ref#1]", "{content_ref}").replace("[ref#2]", "{style_ref}")
        for t in templates
    )
    for templates in (_STYLE_TRANSFER, _STYLE_TRANSFER_UNSEEN)
)
# Item texts that say nothing of an item's role.
_NEUTRAL_TEXTS = ("an image", "the image", "image")

# The reference's objects in the setting (background) of the captioned scene
# (`_reference_part`). Their words ("objects", "shapes", "setting") are none
# of reference_style's ("style"), so the words alone tell the two apart.
_REFERENCE_OBJECTS = (
    "Put the objects of [ref#1] into the setting of {caption}.",
    "Place the shapes from [ref#1] in the setting of {caption}.",
    "Move the objects of [ref#1] into the scene of {caption}.",
    "Keep the objects of [ref#1]; take the setting from {caption}.",
    "Draw the objects of [ref#1] in the setting of {caption}.",
    "Transplant the objects of [ref#1] into {caption}.",
    "Objects from [ref#1], setting from {caption}.",
    "Use the shapes of [ref#1] in place of those in {caption}.",
    "Replace the objects of {caption} with the objects of [ref#1].",
    "Swap in the objects of [ref#1] for the ones in {caption}.",
    "Generate the setting of {caption} holding the objects of [ref#1].",
    "Show the objects of [ref#1] in the surroundings of {caption}.",
    "Take the shapes of [ref#1], where they are, into {caption}.",
    "Render the objects of [ref#1] inside the setting of {caption}.",
    "Create the setting of {caption}, but with the objects of [ref#1].",
    "Make an image of the objects of [ref#1] in the setting of {caption}.",
    "Carry the objects of [ref#1] over to {caption}.",
    "Paint the shapes of [ref#1] into the setting of {caption}.",
    "Relocate the objects of [ref#1] into {caption}.",
    "Set the objects of [ref#1] in the setting of {caption}.",
    "Objects: [ref#1]. Setting: {caption}.",
)
_REFERENCE_OBJECTS_UNSEEN = (
    "Lift every shape out of [ref#1] and drop it into the world of {caption}.",
    "The things in [ref#1], relocated to the surroundings described by {caption}.",
    "Reuse the items of [ref#1]; all else comes from {caption}.",
    "Let the pieces of [ref#1] inhabit {caption} instead of its own.",
    "Same things as [ref#1], new home: {caption}.",
)
# The captioned scene's objects in the reference's style (its background).
_REFERENCE_STYLE = (
    "Draw {caption}, in the style of [ref#1].",
    "Paint {caption} with the style of [ref#1].",
    "Render {caption} styled like [ref#1].",
    "Generate {caption} in the style of [ref#1].",
    "Restyle {caption} after [ref#1].",
    "Make {caption} look like the style of [ref#1].",
    "Copy the style of [ref#1] onto {caption}.",
    "Apply the style of [ref#1] to {caption}.",
    "Create {caption} with the style of [ref#1] instead of its own.",
    "Give {caption} the style of [ref#1].",
    "Style from [ref#1], content from {caption}.",
    "Use the style of [ref#1] for {caption}.",
    "Redraw {caption} in [ref#1] style.",
    "Show {caption}, restyled like [ref#1].",
    "In the style of [ref#1], draw {caption}.",
    "Convert {caption} into the style of [ref#1].",
    "Re-render {caption} using the style of [ref#1].",
    "Produce {caption} styled after [ref#1].",
    "Style: [ref#1]. Content: {caption}.",
    "Match the style of [ref#1] while drawing {caption}.",
    "Transfer the style of [ref#1] to {caption}.",
)
_REFERENCE_STYLE_UNSEEN = (
    "Give {caption} the look of [ref#1].",
    "{caption}, dressed in the aesthetic of [ref#1].",
    "Borrow the visual manner of [ref#1] for {caption}.",
    "Imagine {caption} as if made in the fashion of [ref#1].",
    "Take the look and feel of [ref#1] for a picture of {caption}.",
)

_EDIT = (
    # recolour: {object}, {colour}
    "Make the {object} {colour}.",
    "Change the colour of the {object} to {colour}.",
    "Recolour the {object} {colour}.",
    "Turn the {object} {colour}.",
    "Paint the {object} {colour}.",
    "Change the {object} so it is {colour}.",
    "The {object} should be {colour}.",
    "Color the {object} {colour}.",
    # move: {object}, {position}
    "Move the {object} to the {position}.",
    "Put the {object} at the {position}.",
    "Shift the {object} to the {position}.",
    "Relocate the {object} to the {position}.",
    "Place the {object} at the {position} instead.",
    "Drag the {object} over to the {position}.",
    "The {object} should be at the {position}.",
    "Take the {object} and move it to the {position}.",
    # remove: {object}
    "Remove the {object}.",
    "Delete the {object}.",
    "Take away the {object}.",
    "Erase the {object}.",
    "Get rid of the {object}.",
    "Remove the {object} from the image.",
    "Make the {object} disappear.",
    "Delete the {object} and leave the rest.",
)
_EDIT_UNSEEN = (
    "Could the {object} become {colour}, please?",
    "Swap the colour of the {object} for {colour}, leaving everything else alone.",
    "Let the {object} wander over to the {position}.",
    "I would rather have the {object} sitting at the {position}.",
    "Wipe out the {object} entirely.",
    "Show the same picture without the {object}.",
)

_SEGMENTATION = (
    "Segment the {object}.",
    "Segment the {object} in the image.",
    "Produce a segmentation mask of the {object}.",
    "Show the mask of the {object}.",
    "Mark the {object} in white and everything else in black.",
    "Highlight the pixels of the {object}.",
    "Create a binary mask for the {object}.",
    "Where is the {object}? Answer with a mask.",
    "Extract the silhouette of the {object}.",
    "Generate the segmentation of the {object}.",
    "Paint the {object} white and the rest black.",
    "Output a mask of the {object}.",
    "Find the {object} and show its mask.",
    "Segment out the {object}.",
    "Give me the mask of the {object}.",
    "Separate the {object} from the background.",
    "Draw the region of the {object} in white.",
    "Show which pixels belong to the {object}.",
    "Make a white mask of the {object} on black.",
    "Segmentation: the {object}.",
    "Cut out the {object} as a mask.",
)
_SEGMENTATION_UNSEEN = (
    "Isolate the {object}: white where it is, black elsewhere.",
    "Please fill the area occupied by the {object} with white.",
    "Return a black image in which only the {object} is white.",
    "I need a pixel mask covering the {object}.",
    "Label every pixel of the {object} white.",
)

_DETECTION = (
    "Detect the {object}.",
    "Draw a blue box around the {object}.",
    "Find the {object} and mark it with a blue bounding box.",
    "Localize the {object}.",
    "Put a bounding box around the {object}.",
    "Detect the {object} in the image.",
    "Show where the {object} is with a blue box.",
    "Mark the {object} with a box.",
    "Draw the bounding box of the {object}.",
    "Locate the {object} and box it in blue.",
    "Where is the {object}? Draw a box.",
    "Box the {object}.",
    "Surround the {object} with a blue rectangle.",
    "Object detection: the {object}.",
    "Find the {object}.",
    "Outline the {object} with a bounding box.",
    "Detect and box the {object}.",
    "Add a blue box around the {object}.",
    "Frame the {object} with a blue rectangle.",
    "Give the bounding box of the {object}.",
    "Enclose the {object} in a box.",
)
_DETECTION_UNSEEN = (
    "Help me spot the {object} by framing it in blue.",
    "Trace a thin blue rectangle that tightly encloses the {object}.",
    "Can you point out the {object} with a box?",
    "Indicate the position of the {object} using a bounding rectangle.",
    "Which part of the picture holds the {object}? Box it.",
)

_DEPTH_ESTIMATION = (
    "Estimate the depth of this image.",
    "Estimate the depth map.",
    "Predict the depth of the image.",
    "Generate the depth map of this image.",
    "Show the depth of the scene.",
    "What is the depth of each object? Draw a depth map.",
    "Produce a depth map: near is bright, far is dark.",
    "Compute the depth map of the image.",
    "Depth estimation.",
    "Estimate how far away each object is.",
    "Create a depth image of the scene.",
    "Convert the image into a depth map.",
    "Output the depth map.",
    "Give me the depth of this picture.",
    "Render the depth of the scene in greyscale.",
    "Predict a depth map for the image.",
    "Show the scene depth.",
    "Estimate the distance of every pixel.",
    "Make a depth map of the image.",
    "Turn this picture into its depth map.",
    "Estimate depth.",
)
_DEPTH_ESTIMATION_UNSEEN = (
    "How deep is everything here? Show it as shades of grey.",
    "Measure the distances in the scene and paint them as a greyscale image.",
    "Reveal the 3D structure of the picture as a depth image.",
    "Paint nearer things lighter and farther things darker.",
    "Infer the distance from the camera for each pixel.",
)

_CLASSIFICATION = (
    "Show red if there is {a_object}, otherwise show blue.",
    "Is there {a_object}? Answer red for yes and blue for no.",
    "If the image contains {a_object}, show red; otherwise blue.",
    "Red if {a_object} is present, blue if not.",
    "Classify whether there is {a_object}: red for yes, blue for no.",
    "Does the image contain {a_object}? Red means yes, blue means no.",
    "Fill the image red if you see {a_object}, else blue.",
    "Answer with red if there is {a_object} in the image and blue otherwise.",
    "Show red when {a_object} appears, otherwise show blue.",
    "Is {a_object} in the picture? Yes: red. No: blue.",
    "Output red if {a_object} is there; output blue if it is not.",
    "Check for {a_object}: red if present, blue if absent.",
    "Paint the whole image red if there is {a_object}, blue otherwise.",
    "Red for {a_object} present, blue for absent.",
    "Look for {a_object}. Show red if found, blue if not.",
    "If you can find {a_object}, show red. Otherwise show blue.",
    "Classify: does the image have {a_object}? Red = yes, blue = no.",
    "Respond red if there is {a_object}, and blue if there is not.",
    "Show red in case of {a_object}, else show blue.",
    "Color the image red if it includes {a_object}, otherwise blue.",
    "Is there {a_object} here? Red if so, blue if not.",
)
_CLASSIFICATION_UNSEEN = (
    "Spot {a_object}? Then everything turns red; if not, everything turns blue.",
    "Answer in colour: red means the picture has {a_object}, blue means it does not.",
    "Turn the canvas red on finding {a_object}, or blue when there is none.",
    "Presence test for {a_object}: red = present, blue = missing.",
    "Give a red image if {a_object} can be seen, and a blue image if it cannot.",
)

_SUBJECT_STYLE = (
    "Generate an image of [ref#1] {scene} in the style of [ref#2].",
    "Draw [ref#1] {scene}, styled like [ref#2].",
    "Create a picture of [ref#1] {scene} using the style of [ref#2].",
    "In the style of [ref#2], render [ref#1] {scene}.",
    "Show [ref#1] {scene} with the style of [ref#2].",
    "Paint [ref#1] {scene} in the style of [ref#2].",
    "Make an image of [ref#1] {scene}; copy the style of [ref#2].",
    "Render [ref#1] {scene} in [ref#2] style.",
    "Generate [ref#1] {scene}, with the style taken from [ref#2].",
    "Place [ref#1] {scene} and use the style of [ref#2].",
    "Using the style of [ref#2], draw [ref#1] {scene}.",
    "Create [ref#1] {scene} matching the style of [ref#2].",
    "Depict [ref#1] {scene} in the same style as [ref#2].",
    "Produce an image of [ref#1] {scene} styled after [ref#2].",
    "Following the style of [ref#2], generate [ref#1] {scene}.",
    "Illustrate [ref#1] {scene} in the style of [ref#2].",
    "Apply the style of [ref#2] to an image of [ref#1] {scene}.",
    "An image of [ref#1] {scene} in the style of [ref#2].",
    "Synthesize [ref#1] {scene} with [ref#2] as the style.",
    "Make a picture of [ref#1] {scene} that looks like the style of [ref#2].",
)
_SUBJECT_STYLE_UNSEEN = (
    "Take the subject of [ref#1], set it {scene}, and give it the look of [ref#2].",
    "Subject: [ref#1]. Style: [ref#2]. Place it {scene}.",
    "Borrow the style of [ref#2] to show [ref#1] {scene}.",
    "Imagine [ref#1] {scene}, painted the way [ref#2] is.",
    "Bring [ref#1] into a scene {scene} that shares the aesthetic of [ref#2].",
)

_CONTROL_SUBJECT = (
    "Generate an image of [ref#1] following the {control} [ref#2]{extra}.",
    "Draw [ref#1] with the layout of the {control} [ref#2]{extra}.",
    "Use the {control} [ref#2] to place [ref#1]{extra}.",
    "Create a picture of [ref#1] that matches the {control} [ref#2]{extra}.",
    "Render [ref#1] according to the {control} [ref#2]{extra}.",
    "Given the {control} [ref#2], generate [ref#1]{extra}.",
    "Following the {control} [ref#2], draw [ref#1]{extra}.",
    "Show [ref#1] in the layout given by the {control} [ref#2]{extra}.",
    "Make an image of [ref#1] consistent with the {control} [ref#2]{extra}.",
    "Paint [ref#1] as laid out by the {control} [ref#2]{extra}.",
    "Generate [ref#1], conditioned on the {control} [ref#2]{extra}.",
    "Place [ref#1] where the {control} [ref#2] shows it{extra}.",
    "Produce [ref#1] aligned with the {control} [ref#2]{extra}.",
    "Based on the {control} [ref#2], render [ref#1]{extra}.",
    "Turn the {control} [ref#2] into an image of [ref#1]{extra}.",
    "Depict [ref#1] guided by the {control} [ref#2]{extra}.",
    "Synthesize [ref#1] using the {control} [ref#2]{extra}.",
    "Using [ref#2] as the {control}, create [ref#1]{extra}.",
    "Illustrate [ref#1] matching the {control} [ref#2]{extra}.",
    "Generate a picture of [ref#1] that follows the {control} [ref#2]{extra}.",
)
_CONTROL_SUBJECT_UNSEEN = (
    "Fit [ref#1] into the shape arrangement of the {control} [ref#2]{extra}.",
    "Let the {control} [ref#2] decide where [ref#1] goes{extra}.",
    "Keep the structure of [ref#2] (the {control}) and fill it with [ref#1]{extra}.",
    "Here is the {control} [ref#2]; make [ref#1] follow it{extra}.",
    "Respecting the {control} [ref#2], show [ref#1]{extra}.",
)

_CONTROL_STYLE = (
    "Generate {content} following the {control} [ref#1], in the style of [ref#2].",
    "Draw {content} with the layout of the {control} [ref#1] and the style of [ref#2].",
    "Use the {control} [ref#1] and the style of [ref#2] to create {content}.",
    "Create a picture of {content} that matches the {control} [ref#1], styled "
    "like [ref#2].",
    "Render {content} according to the {control} [ref#1] in the style of [ref#2].",
    "Given the {control} [ref#1] and the style image [ref#2], generate {content}.",
    "Following the {control} [ref#1], paint {content} in the style of [ref#2].",
    "In the style of [ref#2], draw {content} laid out like the {control} [ref#1].",
    "Make an image of {content} consistent with the {control} [ref#1], using the "
    "style of [ref#2].",
    "Generate an image conditioned on the {control} [ref#1] and the style "
    "[ref#2]: {content}.",
    "Produce {content} aligned with the {control} [ref#1], with the style of [ref#2].",
    "Based on the {control} [ref#1], render {content} in [ref#2] style.",
    "Turn the {control} [ref#1] into {content} with the style of [ref#2].",
    "Depict {content} guided by the {control} [ref#1] and styled after [ref#2].",
    "Synthesize {content} from the {control} [ref#1] in the style of [ref#2].",
    "Using [ref#1] as the {control} and [ref#2] as the style, create {content}.",
    "Illustrate {content} matching the {control} [ref#1] and the style of [ref#2].",
    "Generate a picture of {content} that follows the {control} [ref#1] and "
    "looks like [ref#2].",
    "Apply the style of [ref#2] to {content} laid out by the {control} [ref#1].",
    "Draw {content}: layout from the {control} [ref#1], style from [ref#2].",
)
_CONTROL_STYLE_UNSEEN = (
    "Structure comes from the {control} [ref#1], look comes from [ref#2]; the "
    "picture shows {content}.",
    "Fill the {control} [ref#1] with {content}, decorated the way [ref#2] is.",
    "Respect both the {control} [ref#1] and the aesthetic of [ref#2] while "
    "showing {content}.",
    "Imagine {content} arranged as in [ref#1] (the {control}) and styled like [ref#2].",
    "Shape it like the {control} [ref#1], dress it like [ref#2]: {content}.",
)

_MULTI_SUBJECT = (
    "Generate an image of [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Draw [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Create a picture with [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Render [ref#1] {where1} together with [ref#2] {where2}{extra}.",
    "Show [ref#1] {where1} next to [ref#2] {where2}{extra}.",
    "Place [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Paint [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Make an image of [ref#1] {where1} with [ref#2] {where2}{extra}.",
    "Generate [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Depict [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Put [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Produce a picture of [ref#1] {where1} alongside [ref#2] {where2}{extra}.",
    "An image of [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Illustrate [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Synthesize [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Create a scene with [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Generate a new image in which [ref#1] is {where1} and [ref#2] is {where2}{extra}.",
    "Show both [ref#1] {where1} and [ref#2] {where2}{extra}.",
    "Render a picture of [ref#1] {where1} and of [ref#2] {where2}{extra}.",
    "Draw the subjects [ref#1] {where1} and [ref#2] {where2}{extra}.",
)
_MULTI_SUBJECT_UNSEEN = (
    "Bring [ref#1] and [ref#2] together: the first {where1}, the second "
    "{where2}{extra}.",
    "Two subjects, [ref#1] {where1} and [ref#2] {where2}, share one picture{extra}.",
    "Arrange [ref#2] {where2} and [ref#1] {where1}{extra}.",
    "Let [ref#1] stand {where1} while [ref#2] sits {where2}{extra}.",
    "Compose a picture featuring [ref#1] ({where1}) and [ref#2] ({where2}){extra}.",
)

# Context-item texts.
_CONTROL_NOUNS: Mapping[str, tuple[str, ...]] = {
    "edge": ("edge map", "edges", "outline map"),
    "mask": ("mask", "silhouette mask", "segmentation mask"),
    "depth": ("depth map", "depth image"),
    "sketch": ("sketch", "line drawing"),
}
_CONTROL_MAPS: Mapping[str, Callable[[Scene, int], np.ndarray]] = {
    "edge": controls.edge_map,
    "mask": controls.mask_map,
    "depth": controls.depth_map,
    "sketch": controls.sketch_map,
}
# Made-up subject names of the simple world: onset + vowel syllables, a coda.
_ONSETS = (
    "b",
    "br",
    "d",
    "f",
    "gl",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "r",
    "s",
    "sn",
    "t",
    "tr",
    "v",
    "z",
)
_CODAS = ("", "k", "m", "n", "p", "t", "x", "sh")
_STYLE_TEXTS = ("style image", "a style reference", "the style", "reference style")
_CONTENT_TEXTS = ("content image", "the content", "the image to restyle")


# --------------------------------------------------------------------------
# Examples and conditions.


@dataclasses.dataclass(frozen=True)
class Condition:
    """One thing the target satisfies, in terms an image parser can check.

    Attributes:
      kind: "objects" (each of `objects` at its position with its shape and
        colour; `absent` positions empty; with `exclusive`, no object at any
        other position except the `free` ones), "layout" (each of `objects`
        at its position with its shape and size, nothing elsewhere),
        "subject" (some object has `identity` = (shape, colour, pattern)) or
        "style" (the background is `background`). With `anywhere`, "objects"
        asks for each object's shape and colour wherever it is (a caption
        that leaves the layout to a control map); `exclusive` then allows no
        more objects than listed.
    """

    kind: str
    objects: tuple[Obj, ...] = ()
    absent: tuple[str, ...] = ()
    free: tuple[str, ...] = ()
    exclusive: bool = False
    anywhere: bool = False
    identity: tuple[str, str, str] | None = None
    background: Background | None = None


# eq=False: fields hold arrays, so compare by identity.
@dataclasses.dataclass(frozen=True, eq=False)
class TaskExample:
    """One example of a task.

    Attributes:
      task: the task name.
      instruction: what the model is given.
      target: uint8 [R, R, 3], the image it should produce.
      meta: "scene" (the target's scene; for vision tasks the input's),
        "conditions" (name -> Condition, for generation tasks), "template"
        (the template used), and task-specific keys ("input_scene", "query",
        "query_class", "present", "subjects", "control", "op").
      zero_shot: whether the task is held out of training.
    """

    task: str
    instruction: MultiModalInstruction
    target: np.ndarray
    meta: dict[str, Any]
    zero_shot: bool = False


def template_fields(template: str) -> frozenset[str]:
    """The `{field}` names of a template."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


def _pick(
    rng: np.random.Generator, templates: Sequence[str], **fields: str
) -> tuple[str, str]:
    """(filled-in text, template) of a random template with exactly `fields`."""
    matching = [t for t in templates if template_fields(t) == set(fields)]
    if not matching:
        raise ValueError(f"no template has exactly the fields {sorted(fields)}")
    template = matching[int(rng.integers(len(matching)))]
    return template.format(**fields), template


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _where(position: str) -> str:
    """The phrase placing something at `position`, e.g. "on the left"."""
    special = {
        "left": "on the left",
        "right": "on the right",
        "center": "in the center",
    }
    return special.get(position, f"at the {position}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _ground_plane(scene: Scene) -> Scene:
    """`scene` with z ordered by a visible cue: lower rows, larger, lefter = nearer."""

    def nearness(obj: Obj):
        row, col = divmod(shapes_world.POSITIONS.index(obj.position), 3)
        return (row, obj.size == "large", -col)

    order = sorted(range(len(scene.objects)), key=lambda i: nearness(scene.objects[i]))
    z = {i: rank for rank, i in enumerate(order)}  # farthest first: z = 0
    objects = tuple(dataclasses.replace(o, z=z[i]) for i, o in enumerate(scene.objects))
    return Scene(objects, scene.background)


def _random_background(rng: np.random.Generator) -> Background:
    return Background(
        _choice(rng, shapes_world.BG_PATTERNS),
        _choice(rng, tuple(shapes_world.BG_PALETTES)),
    )


def _random_scene(
    rng: np.random.Generator,
    w: World,
    background: Background | None = None,
    counts: tuple[int, int] | None = None,
) -> Scene:
    """1..max_objects objects (or `counts`) avoiding the held-out triples,
    ground-plane z, any background."""
    low, high = counts or (1, w.max_objects)
    scene = shapes_world.sample_scene(
        rng, min_objects=low, max_objects=high, exclude=_HELD_OUT
    )
    return _ground_plane(Scene(scene.objects, background or scene.background))


def _with_objects(
    rng: np.random.Generator,
    w: World,
    fixed: Sequence[Obj],
    max_extra: int,
    background: Background | None = None,
) -> Scene:
    """`fixed` objects plus 0..max_extra random others that do not resemble
    them, within the world's object count."""
    taken = {o.position for o in fixed}
    looks = {(o.shape, o.colour) for o in fixed}
    others = [
        o
        for o in _random_scene(rng, dataclasses.replace(w, max_objects=3)).objects
        if o.position not in taken and (o.shape, o.colour) not in looks
    ]
    max_extra = max(0, min(max_extra, w.max_objects - len(fixed)))
    count = int(rng.integers(max_extra + 1))
    return _ground_plane(
        Scene(
            tuple(fixed) + tuple(others[:count]), background or _random_background(rng)
        )
    )


def _objects_caption(
    scene: Scene, rng: np.random.Generator, w: World, positioned: bool = True
) -> str:
    """A varied caption of the objects only (no background clause)."""
    return shapes_world.describe(
        scene, rng, w.grammar, background=False, positioned=positioned
    )[0]


def _maybe_background(scene: Scene, rng: np.random.Generator) -> str:
    """A background clause (e.g. " on a grey checkered background") half the time."""
    if rng.random() < 0.5:
        return " " + shapes_world.background_phrase(scene.background)
    return ""


def _refer(scene: Scene, index: int, rng: np.random.Generator) -> str:
    """A noun phrase picking out object `index` uniquely, e.g. "red circle"."""
    obj = scene.objects[index]
    options = []
    if sum(o.shape == obj.shape for o in scene.objects) == 1:
        options.append(obj.shape)
    if sum((o.shape, o.colour) == (obj.shape, obj.colour) for o in scene.objects) == 1:
        options.append(f"{obj.colour} {obj.shape}")
    options.append(f"{obj.colour} {obj.shape} {_where(obj.position)}")
    return _choice(rng, options)


def _scene_conditions(
    scene: Scene, names_background: bool, anywhere: bool = False
) -> dict[str, Condition]:
    """The caption's objects (exclusively; wherever they are with `anywhere`),
    and the style if the text names it."""
    conditions = {
        "text": Condition(
            "objects", objects=scene.objects, exclusive=True, anywhere=anywhere
        )
    }
    if names_background:
        conditions["style"] = Condition("style", background=scene.background)
    return conditions


def _subject_obj(
    rng: np.random.Generator, identity: Identity, positions: Sequence[str]
) -> Obj:
    """A subject of `identity` at a random allowed position among `positions`."""
    shape, colour, pattern = identity
    allowed = [p for p in positions if (shape, colour, p) not in _HELD_OUT]
    return Obj(
        shape,
        colour,
        _choice(rng, shapes_world.SIZES),
        _choice(rng, allowed),
        pattern,
    )


def _made_up_name(rng: np.random.Generator) -> str:
    """A pronounceable nonsense word, e.g. "bravik"."""
    syllables = int(rng.integers(2, 4))
    return "".join(
        _choice(rng, _ONSETS) + _choice(rng, "aeiou") for _ in range(syllables)
    ) + _choice(rng, _CODAS)


def _sample_subjects(
    rng: np.random.Generator, w: World, count: int
) -> list[tuple[str, Identity]]:
    """`count` distinct subjects as (name, (shape, colour, pattern))."""
    if w.named_subjects:
        names = list(shapes_world.NAMED_SUBJECTS)
        weights = np.array([shapes_world.NAMED_SUBJECT_WEIGHTS[n] for n in names])
        picked = rng.choice(
            len(names), size=count, replace=False, p=weights / weights.sum()
        )
        return [
            (names[int(i)], shapes_world.NAMED_SUBJECTS[names[int(i)]]) for i in picked
        ]
    subjects: list[tuple[str, Identity]] = []
    while len(subjects) < count:
        identity = (
            _choice(rng, shapes_world.SHAPES),
            _choice(rng, tuple(shapes_world.COLOURS)),
            _choice(rng, shapes_world.PATTERNS),
        )
        if all(identity[:2] != other[:2] for _, other in subjects):
            subjects.append((_made_up_name(rng), identity))
    return subjects


def _subject_references(
    rng: np.random.Generator,
    w: World,
    subject: tuple[str, Identity],
    marker: str,
    count: int,
) -> list[ContextItem]:
    """`count` images of `subject` in other scenes, each under `marker`."""
    name, identity = subject
    items = []
    for _ in range(count):
        obj = _subject_obj(rng, identity, shapes_world.POSITIONS)
        scene = _with_objects(rng, w, [obj], max_extra=1)
        image = shapes_world.render(scene, w.resolution)
        items.append(ContextItem(marker, f"{_article(name)} {name}", image))
    return items


def _subject_condition(obj: Obj) -> Condition:
    return Condition("subject", identity=(obj.shape, obj.colour, obj.pattern))


# --------------------------------------------------------------------------
# Builders: (rng, resolution, templates) -> (instruction, target, meta).

Built = tuple[MultiModalInstruction, np.ndarray, dict[str, Any]]


def _text_to_image(rng: np.random.Generator, w: World, templates) -> Built:
    scene = _random_scene(rng, w)
    caption, named = shapes_world.describe(scene, rng, w.grammar)
    text, template = _pick(rng, templates, caption=caption)
    meta = {
        "scene": scene,
        "conditions": _scene_conditions(scene, named),
        "template": template,
    }
    return MultiModalInstruction(text), shapes_world.render(scene, w.resolution), meta


def _control_to_image(kind: str) -> Callable[..., Built]:
    def build(rng: np.random.Generator, w: World, templates) -> Built:
        scene = _random_scene(rng, w)
        # The caption says what the objects look like, the map where they are
        # (so that the map, not the text, gives the layout).
        caption, named = shapes_world.describe(scene, rng, w.grammar, positioned=False)
        noun = _choice(rng, _CONTROL_NOUNS[kind])
        control = _CONTROL_MAPS[kind](scene, w.resolution)
        text, template = _pick(rng, templates, caption=caption, control=noun)
        conditions = {
            "control": Condition("layout", objects=scene.objects),
            **_scene_conditions(scene, named, anywhere=True),
        }
        context = (ContextItem("[ref#1]", noun, control),)
        meta = {
            "scene": scene,
            "conditions": conditions,
            "template": template,
            "control": kind,
        }
        instruction = MultiModalInstruction(text, context, input_image=control)
        return instruction, shapes_world.render(scene, w.resolution), meta

    return build


def _subject_scene(
    rng: np.random.Generator,
    w: World,
    subjects: Sequence[tuple[str, Identity]],
    max_extra: int,
    background=None,
) -> tuple[Scene, list[Obj]]:
    """A scene holding the subjects (at distinct positions) and extras."""
    placed: list[Obj] = []
    for _, identity in subjects:
        free = [
            p for p in shapes_world.POSITIONS if p not in {o.position for o in placed}
        ]
        placed.append(_subject_obj(rng, identity, free))
    scene = _with_objects(rng, w, placed, max_extra, background)
    by_position = {o.position: o for o in scene.objects}
    return scene, [by_position[o.position] for o in placed]


def _subject_where(
    scene: Scene, subject: Obj, rng: np.random.Generator, w: World
) -> str:
    """Where the subject goes, and which other objects join it."""
    others = tuple(o for o in scene.objects if o.position != subject.position)
    where = _where(subject.position)
    if others:
        where += ", together with " + _objects_caption(
            Scene(others, scene.background), rng, w
        )
    return where


def _subject(rng: np.random.Generator, w: World, templates) -> Built:
    subjects = _sample_subjects(rng, w, 1)
    refs = _subject_references(rng, w, subjects[0], "[ref#1]", int(rng.integers(1, 4)))
    scene, (subject,) = _subject_scene(rng, w, subjects, max_extra=1)
    extra = _maybe_background(scene, rng)
    text, template = _pick(
        rng, templates, scene=_subject_where(scene, subject, rng, w) + extra
    )
    meta = {
        "scene": scene,
        "conditions": {
            "subject": _subject_condition(subject),
            **_scene_conditions(scene, bool(extra)),
        },
        "template": template,
        "subjects": (subjects[0][0],),
    }
    image = shapes_world.render(scene, w.resolution)
    return MultiModalInstruction(text, tuple(refs)), image, meta


def _style_item(rng: np.random.Generator, marker: str, scene: Scene, r: int):
    return ContextItem(
        marker, _choice(rng, _STYLE_TEXTS), shapes_world.render(scene, r)
    )


def _style_generation(rng: np.random.Generator, w: World, templates) -> Built:
    style_scene = _random_scene(rng, w)
    scene = _random_scene(rng, w, background=style_scene.background)
    text, template = _pick(rng, templates, content=_objects_caption(scene, rng, w))
    meta = {
        "scene": scene,
        "conditions": {
            "text": Condition("objects", objects=scene.objects, exclusive=True),
            "style": Condition("style", background=scene.background),
        },
        "template": template,
    }
    context = (_style_item(rng, "[ref#1]", style_scene, w.resolution),)
    return (
        MultiModalInstruction(text, context),
        shapes_world.render(scene, w.resolution),
        meta,
    )


def _other_background(rng: np.random.Generator, background: Background) -> Background:
    while True:
        other = _random_background(rng)
        if other != background:
            return other


def _transfer_scenes(rng: np.random.Generator, w: World) -> tuple[Scene, Scene, Scene]:
    """(content, style scene, target) of a transfer: the content's objects on
    the style scene's background, which differs from the content's."""
    content = _random_scene(rng, w)
    style_scene = _random_scene(rng, w, _other_background(rng, content.background))
    return content, style_scene, Scene(content.objects, style_scene.background)


def _transfer_conditions(scene: Scene) -> dict[str, Condition]:
    """A transfer's conditions: `scene`'s objects on its background."""
    return {
        "content": Condition("objects", objects=scene.objects, exclusive=True),
        "style": Condition("style", background=scene.background),
    }


def _transfer_meta(scene: Scene, content: Scene, template: str) -> dict:
    return {
        "scene": scene,
        "input_scene": content,
        "conditions": _transfer_conditions(scene),
        "template": template,
    }


def _style_transfer(rng: np.random.Generator, w: World, templates) -> Built:
    content, style_scene, scene = _transfer_scenes(rng, w)
    text, template = _pick(rng, templates)
    content_image = shapes_world.render(content, w.resolution)
    context = (
        ContextItem("[ref#1]", _choice(rng, _CONTENT_TEXTS), content_image),
        _style_item(rng, "[ref#2]", style_scene, w.resolution),
    )
    meta = _transfer_meta(scene, content, template)
    instruction = MultiModalInstruction(text, context, input_image=content_image)
    return instruction, shapes_world.render(scene, w.resolution), meta


def _role_transfer(
    rng: np.random.Generator, w: World, templates, told: bool = False
) -> Built:
    """Style transfer with the roles given by the instruction alone: the
    content and the style scene go under [ref#1] / [ref#2] in a random order,
    both with a neutral item text and no input image. `told`: the items'
    texts say their roles too (style transfer's), an oracle of the roles."""
    content, style_scene, scene = _transfer_scenes(rng, w)
    content_ref, style_ref = ("[ref#1]", "[ref#2]")[:: 1 if rng.integers(2) else -1]
    text, template = _pick(rng, templates, content_ref=content_ref, style_ref=style_ref)
    if set(text.split()) == {content_ref, style_ref}:
        # A text of markers alone (the raw baseline's) names them in order:
        # the order of its fields would say the roles.
        text = "[ref#1] [ref#2]"
    images = {content_ref: content, style_ref: style_scene}
    item_texts = dict.fromkeys(images, _NEUTRAL_TEXTS)
    if told:
        item_texts = {content_ref: _CONTENT_TEXTS, style_ref: _STYLE_TEXTS}
    context = tuple(
        ContextItem(
            marker,
            _choice(rng, item_texts[marker]),
            shapes_world.render(images[marker], w.resolution),
        )
        for marker in ("[ref#1]", "[ref#2]")
    )
    # What the target would be with the roles the other way round (scored as
    # `swapped`): the style scene's objects on the content's background.
    swapped = _transfer_conditions(Scene(style_scene.objects, content.background))
    meta = {
        **_transfer_meta(scene, content, template),
        "content_ref": content_ref,
        "swapped": swapped,
    }
    instruction = MultiModalInstruction(text, context)
    return instruction, shapes_world.render(scene, w.resolution), meta


def _reference_part(part: str) -> Callable[..., Built]:
    """A transfer whose reference gives `part` ("objects" or "style") and a
    caption the rest: reference_objects draws the reference's objects on the
    captioned scene's background, reference_style the captioned scene's
    objects on the reference's. The caption names both, and the two share
    one draw of scenes, so the raw texts ("{caption} [ref#1]") and items
    say nothing of which part to take; `swapped` scores the other part. The
    reference is also the input image, as style transfer's content is: the
    part kept is then in place pixel for pixel (through the context memory
    alone, neither (a) nor (c) drew the reference's objects after 2717 steps
    of "parts", session 61)."""
    if part not in ("objects", "style"):
        raise ValueError(f"a reference gives 'objects' or 'style', got {part!r}")

    def build(rng: np.random.Generator, w: World, templates) -> Built:
        content, style_scene, scene = _transfer_scenes(rng, w)
        reference, described = (
            (content, style_scene) if part == "objects" else (style_scene, content)
        )
        caption = shapes_world.describe(described, rng, w.grammar, background=True)[0]
        text, template = _pick(rng, templates, caption=caption)
        image = shapes_world.render(reference, w.resolution)
        context = (ContextItem("[ref#1]", _choice(rng, _NEUTRAL_TEXTS), image),)
        meta = {
            **_transfer_meta(scene, reference, template),
            "swapped": _transfer_conditions(
                Scene(style_scene.objects, content.background)
            ),
        }
        return (
            MultiModalInstruction(text, context, input_image=image),
            shapes_world.render(scene, w.resolution),
            meta,
        )

    return build


def _edit_options(scene: Scene, obj: Obj) -> dict[str, list]:
    """Feasible edits of `obj`: new colours, new positions, and removal."""
    taken = {o.position for o in scene.objects}
    colours = [
        c
        for c in shapes_world.COLOURS
        if c != obj.colour and (obj.shape, c, obj.position) not in _HELD_OUT
    ]
    positions = [
        p
        for p in shapes_world.POSITIONS
        if p not in taken and (obj.shape, obj.colour, p) not in _HELD_OUT
    ]
    options = {"recolour": colours, "move": positions, "remove": [None]}
    return {op: values for op, values in options.items() if values}


def _edit(rng: np.random.Generator, w: World, templates) -> Built:
    scene = _random_scene(rng, w)
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    options = _edit_options(scene, obj)
    op = _choice(rng, tuple(options))
    value = _choice(rng, options[op])
    fields = {"object": _refer(scene, index, rng)}
    if op == "recolour":
        changed, fields["colour"] = (dataclasses.replace(obj, colour=value),), value
    elif op == "move":
        changed, fields["position"] = (dataclasses.replace(obj, position=value),), value
    else:
        changed = ()
    others = scene.objects[:index] + scene.objects[index + 1 :]
    target = _ground_plane(Scene(others + changed, scene.background))
    text, template = _pick(rng, templates, **fields)
    moved = tuple(o.position for o in changed if o.position != obj.position)
    conditions = {
        "edit": Condition(
            "objects",
            objects=changed,
            absent=(obj.position,) if op != "recolour" else (),
        ),
        "preserve": Condition(
            "objects", objects=others, free=(obj.position, *moved), exclusive=True
        ),
        "style": Condition("style", background=scene.background),
    }
    meta = {
        "scene": target,
        "input_scene": scene,
        "conditions": conditions,
        "template": template,
        "op": op,
    }
    image = shapes_world.render(scene, w.resolution)
    return (
        MultiModalInstruction(text, input_image=image),
        shapes_world.render(target, w.resolution),
        meta,
    )


def _query_task(target_fn: Callable[[Scene, np.ndarray, int, int], np.ndarray]):
    """A vision task asking about one object of the input image."""

    def build(rng: np.random.Generator, w: World, templates) -> Built:
        scene = _random_scene(rng, w, counts=w.query_objects)
        index = int(rng.integers(len(scene.objects)))
        text, template = _pick(rng, templates, object=_refer(scene, index, rng))
        image = shapes_world.render(scene, w.resolution)
        meta = {"scene": scene, "query": index, "template": template}
        target = target_fn(scene, image, index, w.resolution)
        return MultiModalInstruction(text, input_image=image), target, meta

    return build


def _depth_estimation(rng: np.random.Generator, w: World, templates) -> Built:
    scene = _random_scene(rng, w, counts=w.depth_objects)
    text, template = _pick(rng, templates)
    image = shapes_world.render(scene, w.resolution)
    meta = {"scene": scene, "template": template}
    target = controls.depth_target(scene, w.resolution)
    return MultiModalInstruction(text, input_image=image), target, meta


def _classification(rng: np.random.Generator, w: World, templates) -> Built:
    scene = _random_scene(rng, w, counts=w.query_objects)
    present_classes = sorted({(o.shape, o.colour) for o in scene.objects})
    present = bool(rng.random() < 0.5)
    if present:
        shape, colour = _choice(rng, present_classes)
    else:
        absent = [
            (s, c)
            for s in shapes_world.SHAPES
            for c in shapes_world.COLOURS
            if (s, c) not in present_classes
        ]
        shape, colour = _choice(rng, absent)
    return _classification_example(rng, w, templates, scene, (shape, colour), present)


def _classification_example(
    rng: np.random.Generator,
    w: World,
    templates,
    scene: Scene,
    query: tuple[str, str],
    present: bool,
) -> Built:
    """A classification example asking whether `scene` holds the class
    `query` (shape, colour), of which `present` is the answer."""
    shape, colour = query
    a_object = f"{_article(colour)} {colour} {shape}"
    _, template = _pick(rng, templates, a_object=a_object)
    text = _name_answers(template, w.answers).format(a_object=a_object)
    colours = tuple(controls.ANSWER_COLOURS[name] for name in w.answers)
    meta = {
        "scene": scene,
        "query_class": query,
        "present": present,
        "template": template,
        "answer_colours": colours,
    }
    image = shapes_world.render(scene, w.resolution)
    target = controls.classification_target(present, w.resolution, *colours)
    return MultiModalInstruction(text, input_image=image), target, meta


_ANSWER_WORD = re.compile(r"\b(?:[Rr]ed|[Bb]lue)\b")


def _name_answers(template: str, answers: tuple[str, str]) -> str:
    """A classification template with its answer words, "red" (present) and
    "blue" (absent), replaced by `answers`; fields are filled in afterwards,
    so the queried object keeps its colour."""
    names = dict(zip(controls.ANSWERS, answers, strict=True))

    def swap(match: re.Match) -> str:
        word = names[match.group(0).lower()]
        return word.capitalize() if match.group(0)[0].isupper() else word

    return _ANSWER_WORD.sub(swap, template)


def _subject_style(
    rng: np.random.Generator, w: World, templates, reference: bool = False
) -> Built:
    """The subject of [ref#1] placed as the text says, in the style (the
    background) of [ref#2]. With `reference` (subject+reference_style), [ref#2]
    is "an image" whose objects the target leaves out and it is also the
    input image, as reference_style's reference is: an input image gives its
    objects in style_transfer, edit and reference_objects and only its style
    in reference_style, so the instruction's words alone say that it gives
    its style here; `swapped` scores the reference's objects copied."""
    subjects = _sample_subjects(rng, w, 1)
    refs = _subject_references(rng, w, subjects[0], "[ref#1]", int(rng.integers(1, 3)))
    style_scene = _random_scene(rng, w)
    scene, (subject,) = _subject_scene(rng, w, subjects, 1, style_scene.background)
    text, template = _pick(rng, templates, scene=_subject_where(scene, subject, rng, w))
    conditions = {
        "subject": _subject_condition(subject),
        "text": Condition("objects", objects=scene.objects, exclusive=True),
        "style": Condition("style", background=scene.background),
    }
    meta = {
        "scene": scene,
        "conditions": conditions,
        "template": template,
        "subjects": (subjects[0][0],),
    }
    if not reference:
        context = (*refs, _style_item(rng, "[ref#2]", style_scene, w.resolution))
        instruction = MultiModalInstruction(text, context)
        return instruction, shapes_world.render(scene, w.resolution), meta
    image = shapes_world.render(style_scene, w.resolution)
    context = (*refs, ContextItem("[ref#2]", _choice(rng, _NEUTRAL_TEXTS), image))
    meta["input_scene"] = style_scene
    meta["swapped"] = {"content": _transfer_conditions(style_scene)["content"]}
    instruction = MultiModalInstruction(text, context, input_image=image)
    return instruction, shapes_world.render(scene, w.resolution), meta


def _control_subject(rng: np.random.Generator, w: World, templates) -> Built:
    subjects = _sample_subjects(rng, w, 1)
    refs = _subject_references(rng, w, subjects[0], "[ref#1]", int(rng.integers(1, 3)))
    scene, (subject,) = _subject_scene(rng, w, subjects, max_extra=0)
    kind = _choice(rng, tuple(_CONTROL_MAPS))
    noun = _choice(rng, _CONTROL_NOUNS[kind])
    control = _CONTROL_MAPS[kind](scene, w.resolution)
    extra = _maybe_background(scene, rng)
    text, template = _pick(rng, templates, control=noun, extra=extra)
    conditions = {
        "subject": _subject_condition(subject),
        "control": Condition("layout", objects=scene.objects),
    }
    if extra:
        conditions["style"] = Condition("style", background=scene.background)
    meta = {
        "scene": scene,
        "conditions": conditions,
        "template": template,
        "subjects": (subjects[0][0],),
        "control": kind,
    }
    context = (*refs, ContextItem("[ref#2]", noun, control))
    instruction = MultiModalInstruction(text, context, input_image=control)
    return instruction, shapes_world.render(scene, w.resolution), meta


def _control_style(rng: np.random.Generator, w: World, templates) -> Built:
    style_scene = _random_scene(rng, w)
    scene = _random_scene(rng, w, background=style_scene.background)
    kind = _choice(rng, tuple(_CONTROL_MAPS))
    noun = _choice(rng, _CONTROL_NOUNS[kind])
    control = _CONTROL_MAPS[kind](scene, w.resolution)
    content = _objects_caption(scene, rng, w, positioned=False)
    text, template = _pick(rng, templates, content=content, control=noun)
    conditions = {
        "control": Condition("layout", objects=scene.objects),
        "text": Condition(
            "objects", objects=scene.objects, exclusive=True, anywhere=True
        ),
        "style": Condition("style", background=scene.background),
    }
    meta = {
        "scene": scene,
        "conditions": conditions,
        "template": template,
        "control": kind,
    }
    context = (
        ContextItem("[ref#1]", noun, control),
        _style_item(rng, "[ref#2]", style_scene, w.resolution),
    )
    instruction = MultiModalInstruction(text, context, input_image=control)
    return instruction, shapes_world.render(scene, w.resolution), meta


def _multi_subject(rng: np.random.Generator, w: World, templates) -> Built:
    chosen = _sample_subjects(rng, w, 2)
    refs = []
    for k, subject in enumerate(chosen, start=1):
        refs += _subject_references(
            rng, w, subject, f"[ref#{k}]", int(rng.integers(1, 3))
        )
    scene, subjects = _subject_scene(rng, w, chosen, max_extra=0)
    extra = _maybe_background(scene, rng)
    text, template = _pick(
        rng,
        templates,
        where1=_where(subjects[0].position),
        where2=_where(subjects[1].position),
        extra=extra,
    )
    conditions = {
        "subject1": _subject_condition(subjects[0]),
        "subject2": _subject_condition(subjects[1]),
        **_scene_conditions(scene, bool(extra)),
    }
    meta = {
        "scene": scene,
        "conditions": conditions,
        "template": template,
        "subjects": tuple(name for name, _ in chosen),
    }
    image = shapes_world.render(scene, w.resolution)
    return MultiModalInstruction(text, tuple(refs)), image, meta


# --------------------------------------------------------------------------
# The catalogue.


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: how to build an example, and its instruction templates.

    Attributes:
      name: the task name.
      build: (rng, world, templates) -> (instruction, target, meta).
      templates: training paraphrases.
      unseen_templates: paraphrases kept out of training, for robustness.
      zero_shot: whether the task is held out of training.
      opt_in: whether the task is left out of the defaults (`TRAIN_TASKS`:
        the default mixture, the word pieces' texts, the evaluation): trained
        when a mixture names it, scored when `evals.tasks.names` does.
      composes: of an opt-in zero-shot combination, the tasks it combines:
        it is scored when the model's mixture names them all (or when
        `evals.tasks.names` names it).
    """

    name: str
    build: Callable[[np.random.Generator, World, Sequence[str]], Built]
    templates: tuple[str, ...]
    unseen_templates: tuple[str, ...]
    zero_shot: bool = False
    opt_in: bool = False
    composes: tuple[str, ...] = ()

    def make(
        self,
        rng: np.random.Generator,
        world: World,
        *,
        unseen: bool = False,
        plain: bool = False,
        noise: tuple[np.random.Generator, float] | None = None,
        plain_items: bool = False,
    ) -> TaskExample:
        """One example; `unseen` phrases it with an unseen template, `plain`
        gives the bare conditions without instruction words (`plain_templates`),
        `noise` (rng, p) makes up its instruction words at rate p
        (`noisy_templates`), `plain_items` drops the context items' own texts
        (a style item's "style image", a control's "edge map", a subject's
        name), each item keeping its marker and image."""
        if plain:
            templates = plain_templates(self.templates)
        else:
            templates = self.unseen_templates if unseen else self.templates
        if noise is not None:
            templates = noisy_templates(templates, *noise)
        instruction, target, meta = self.build(rng, world, templates)
        if plain:
            text = " ".join(instruction.text.split())
            instruction = dataclasses.replace(instruction, text=text)
        if plain_items:
            items = tuple(dataclasses.replace(c, text="") for c in instruction.context)
            instruction = dataclasses.replace(instruction, context=items)
        return TaskExample(self.name, instruction, target, meta, self.zero_shot)


# A template's instruction words, found between its fields and markers.
_TEMPLATE_PART = re.compile(r"\{[^{}]*\}|\[ref#\d+\]|[A-Za-z]+")


def noisy_templates(
    templates: Sequence[str], rng: np.random.Generator, p: float
) -> tuple[str, ...]:
    """The templates with each instruction word, with probability `p`, made up
    anew (3-8 random letters); fields and markers are kept, so the example's
    conditions do not change. A stand-in in training for the words a person
    writes that no training text has (every unseen paraphrase has some, and a
    text encoder trained from nothing cannot read them): the model learns to
    take the task from the words it knows (`data.word_noise`)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"word noise must be in [0, 1), got {p}")

    def swap(match: re.Match) -> str:
        part = match.group(0)
        if part[0] in "{[" or rng.random() >= p:
            return part
        return "".join(rng.choice(list(string.ascii_lowercase), rng.integers(3, 9)))

    return tuple(_TEMPLATE_PART.sub(swap, t) for t in templates)


def plain_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates stripped to their fields and markers, in order: the text of
    the multi-task baseline trained without instructions (the paper's Table 4),
    e.g. "Generate {content} in the style of [ref#1]." -> "{content} [ref#1]"."""
    out = []
    for template in templates:
        fields = [f"{{{f}}}" for _, f, _, _ in string.Formatter().parse(template) if f]
        markers = sorted(set(_MARKER.findall(template)))
        bare = " ".join(fields + markers)
        if bare not in out:
            out.append(bare)
    return tuple(out)


def _tasks() -> dict[str, Task]:
    tasks = [
        Task("text_to_image", _text_to_image, _TEXT, _TEXT_UNSEEN),
        *(
            Task(f"{kind}_to_image", _control_to_image(kind), _CONTROL, _CONTROL_UNSEEN)
            for kind in _CONTROL_MAPS
        ),
        Task("subject", _subject, _SUBJECT, _SUBJECT_UNSEEN),
        Task(
            "style_generation",
            _style_generation,
            _STYLE_GENERATION,
            _STYLE_GENERATION_UNSEEN,
        ),
        Task(
            "style_transfer", _style_transfer, _STYLE_TRANSFER, _STYLE_TRANSFER_UNSEEN
        ),
        Task(
            "role_transfer",
            _role_transfer,
            _ROLE_TRANSFER,
            _ROLE_TRANSFER_UNSEEN,
            opt_in=True,
        ),
        Task(
            "role_transfer_told",
            functools.partial(_role_transfer, told=True),
            _ROLE_TRANSFER,
            _ROLE_TRANSFER_UNSEEN,
            opt_in=True,
        ),
        *(
            Task(
                f"reference_{part}",
                _reference_part(part),
                templates,
                unseen,
                opt_in=True,
            )
            for part, templates, unseen in (
                ("objects", _REFERENCE_OBJECTS, _REFERENCE_OBJECTS_UNSEEN),
                ("style", _REFERENCE_STYLE, _REFERENCE_STYLE_UNSEEN),
            )
        ),
        Task("edit", _edit, _EDIT, _EDIT_UNSEEN),
        Task(
            "segmentation",
            _query_task(lambda s, _, i, r: controls.segmentation_target(s, i, r)),
            _SEGMENTATION,
            _SEGMENTATION_UNSEEN,
        ),
        Task(
            "detection",
            _query_task(controls.detection_target),
            _DETECTION,
            _DETECTION_UNSEEN,
        ),
        Task(
            "depth_estimation",
            _depth_estimation,
            _DEPTH_ESTIMATION,
            _DEPTH_ESTIMATION_UNSEEN,
        ),
        Task(
            "classification", _classification, _CLASSIFICATION, _CLASSIFICATION_UNSEEN
        ),
        Task(
            "subject+style", _subject_style, _SUBJECT_STYLE, _SUBJECT_STYLE_UNSEEN, True
        ),
        Task(
            "control+subject",
            _control_subject,
            _CONTROL_SUBJECT,
            _CONTROL_SUBJECT_UNSEEN,
            True,
        ),
        Task(
            "control+style", _control_style, _CONTROL_STYLE, _CONTROL_STYLE_UNSEEN, True
        ),
        Task(
            "multi_subject", _multi_subject, _MULTI_SUBJECT, _MULTI_SUBJECT_UNSEEN, True
        ),
        Task(
            "subject+reference_style",
            functools.partial(_subject_style, reference=True),
            _SUBJECT_STYLE,
            _SUBJECT_STYLE_UNSEEN,
            zero_shot=True,
            opt_in=True,
            composes=("subject", "reference_style"),
        ),
    ]
    return {task.name: task for task in tasks}


TASKS: Mapping[str, Task] = types.MappingProxyType(_tasks())
TRAIN_TASKS = tuple(
    name for name, task in TASKS.items() if not (task.zero_shot or task.opt_in)
)
OPT_IN_TASKS = tuple(
    name for name, task in TASKS.items() if task.opt_in and not task.zero_shot
)
ZERO_SHOT_TASKS = tuple(
    name for name, task in TASKS.items() if task.zero_shot and not task.opt_in
)
# Zero-shot combinations scored only for a model that trained the tasks they
# compose (`Task.composes`).
OPT_IN_ZERO_SHOT_TASKS = tuple(
    name for name, task in TASKS.items() if task.zero_shot and task.opt_in
)
# InstructCV tasks: scored by their own metrics, not by the oracle.
VISION_TASKS = ("segmentation", "detection", "depth_estimation", "classification")


def _normalise(weights: Mapping[str, float]) -> Mapping[str, float]:
    total = sum(weights.values())
    return types.MappingProxyType({k: v / total for k, v in weights.items()})


# See the module docstring for where each weight comes from.
MIXTURE: Mapping[str, float] = _normalise(
    {
        "text_to_image": 0.15,
        "style_generation": 0.15,
        "style_transfer": 0.10,
        "depth_to_image": 0.06,
        "mask_to_image": 0.06,
        "edge_to_image": 0.06,
        "sketch_to_image": 0.02,
        "subject": 0.35,
        "edit": 0.10,
        "segmentation": 0.04,
        "detection": 0.04,
        "depth_estimation": 0.04,
        "classification": 0.04,
    }
)


def get_task(name: str) -> Task:
    """The task called `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def sample_task(
    rng: np.random.Generator, mixture: Mapping[str, float] = MIXTURE
) -> str:
    """A task name drawn with probability proportional to its `mixture` weight.

    Raises:
      ValueError: on unknown task names, negative or non-finite weights, or
        weights summing to zero.
    """
    names = list(mixture)
    for name in names:
        get_task(name)
    weights = np.array([mixture[n] for n in names], np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"mixture weights must be finite, >= 0 and not all 0, got {dict(mixture)}"
        )
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def context_slots(
    mixture: Mapping[str, float], world: str = "full", margin: float = 1.25
) -> float:
    """Context items to encode per example in training (`UNetConfig.context_slots`).

    The mixture's mean item count (64 examples of each task), times `margin`
    for batches that happen to carry more, rounded up to a quarter and capped
    at `MAX_CONTEXT`, at least 0.25. A batch holding more items than its slots drops the
    surplus (`models.packing`), so a too-small value silently hides context.
    """
    weights = {name: w for name, w in mixture.items() if w > 0}
    if not weights:
        raise ValueError(f"mixture has no task with a positive weight: {mixture}")
    mean = sum(w * _mean_items(name, world) for name, w in weights.items()) / sum(
        weights.values()
    )
    # At least a quarter: 0 would mean "encode every padded slot".
    return min(float(MAX_CONTEXT), max(0.25, math.ceil(mean * margin * 4) / 4))


@functools.cache
def _mean_items(task_name: str, world: str) -> float:
    counts = [
        len(make_example(task_name, i, 0, world=world).instruction.context)
        for i in range(64)
    ]
    return float(np.mean(counts))


def answer_names(option: str) -> tuple[str, ...] | None:
    """`make_example`'s answers from the config option `data.answers`:
    "present/absent" (e.g. "white/black"), or "" for the world's own."""
    return tuple(option.split("/")) if option else None


# Most objects `make_example(query_objects=)` puts in a query scene (the
# full world's most).
MAX_QUERY_OBJECTS = 3


def _forced(templates: Sequence[str], template: str) -> tuple[str, ...]:
    """`templates` with each of `template`'s fields replaced by it."""
    fields = template_fields(template)
    return tuple(template if template_fields(t) == fields else t for t in templates)


def make_example(
    task_name: str,
    index: int,
    seed: int,
    resolution: int = 32,
    unseen: bool = False,
    world: str = "full",
    plain: bool = False,
    word_noise: float = 0.0,
    query_objects: int = 0,
    answers: Sequence[str] | None = None,
    plain_items: bool = False,
    template: str | None = None,
) -> TaskExample:
    """Example number `index` of a task; a pure function of its arguments.

    Args:
      task_name: a key of `TASKS`.
      index: example number, >= 0.
      seed: dataset seed, >= 0.
      resolution: image side; a positive multiple of 16.
      unseen: phrase the instruction with an unseen template.
      world: "full" or "simple" (`WORLDS`).
      plain: the text without instruction words (`plain_templates`).
      word_noise: the rate at which its instruction words are made up
        (`noisy_templates`); 0 draws nothing more, so the example is as before.
      query_objects: if positive, exactly this many objects in the scenes of
        segmentation, detection and classification (`World.query_objects`);
        0 keeps the world's.
      answers: classification's (present, absent) answer names, keys of
        `controls.ANSWER_COLOURS` (`World.answers`); None keeps the world's.
      plain_items: the context items without their own texts (markers and
        images only): with `plain`, the raw conditions and captions.
      template: phrase it with this template in place of every template of
        the same fields, so that the draws, and with them the scene,
        conditions and target, stay those of the example phrased as usual.
        An example whose fields differ keeps one of its own templates
        (`meta["template"]` says which).
    """
    task = get_task(task_name)
    if template is not None:
        task = dataclasses.replace(
            task,
            templates=_forced(task.templates, template),
            unseen_templates=_forced(task.unseen_templates, template),
        )
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    spec = get_world(world, resolution)
    if query_objects:
        if not 1 <= query_objects <= MAX_QUERY_OBJECTS:
            raise ValueError(
                f"query_objects must be 0 (the world's) or 1..{MAX_QUERY_OBJECTS}, "
                f"got {query_objects}"
            )
        spec = dataclasses.replace(spec, query_objects=(query_objects,) * 2)
    if answers is not None:
        answers = tuple(answers)
        if (
            len(answers) != 2
            or len(set(answers)) != 2
            or not set(answers) <= set(controls.ANSWER_COLOURS)
        ):
            raise ValueError(
                f"answers must be two different names of "
                f"{sorted(controls.ANSWER_COLOURS)}, got {answers}"
            )
        spec = dataclasses.replace(spec, answers=answers)
    if unseen:
        spec = dataclasses.replace(spec, grammar="unseen")
    key = [seed, zlib.crc32(task_name.encode()), index, int(unseen)]
    noise = None
    if word_noise:  # its own generator: the example's scene stays the same
        noise = (np.random.default_rng([*key, 1]), word_noise)
    rng = np.random.default_rng(key)
    return task.make(
        rng, spec, unseen=unseen, plain=plain, noise=noise, plain_items=plain_items
    )
